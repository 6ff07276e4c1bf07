"""Engine metrics for the autoscaler, read from Prometheus (prometheus-api-client).

`observe()` runs one instant query per signal (output tokens/s, running and waiting
requests, KV-cache usage) for one LLMDeployment and returns a plain
`decide.Observation`. Every query carries a timeout (client side and Prometheus's own
`timeout` parameter); the client's bounds the whole answer, not each read. A failed or
empty token-rate query makes the whole observation unavailable, which `decide()` answers
by keeping the replica count; a failed auxiliary query only leaves that field None.
Called by the autoscaler loop; `make_client` builds the `PrometheusConnect` it passes in.
The operator asks through `GroupedObserver`: each engine's queries aggregated by
(namespace, llmdeployment) once per interval for every LLMDeployment, not per object.

Answers are checked here for form: an HTTP error, a body that is not JSON or not a query
result, a sample that is not `[time, "number"]`, a NaN or infinite token rate and the same
series twice each fail the query, with a sentence for the MetricsAvailable condition.
Numbers are passed on as read (a negative rate is not clamped): whether they can be
measurements is `decide.unreliable`'s call, which knows the plan.

Series are selected by the target labels the PodMonitor relabelling gives every engine
pod, `namespace` and `llmdeployment` (the same labels e2e/sim/engine_sim.py writes). The
metric names and queries are each engine's own (`Engine.metrics` in
`llm_operator.engines`, which cites the engine's source).
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from string import Template
from typing import Any, Final, Protocol

import requests
import urllib3
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from llm_operator import engines
from llm_operator.autoscaler.decide import RATE_WINDOW_S, Observation
from llm_operator.engines import Metrics

RATE_WINDOW: Final = f"{RATE_WINDOW_S / 60:.0f}m"  # decide() knows how long the rate looks back
# NOTE: the grouped token-rate answer for 10,000 LLMDeployments is about 2 MB; an answer
# 16x that is not one we asked for, and is not held in memory.
MAX_ANSWER_BYTES: Final = 32 * 2**20
_READ_CHUNK: Final = 64 * 1024


EngineQueries = Metrics


class QueryClient(Protocol):
    """The part of `PrometheusConnect` this module uses (tests pass a fake)."""

    def custom_query(self, query: str, params: dict[str, Any], timeout: int) -> Any:
        """Run an instant query; return the `data.result` list."""


class MetricsError(Exception):
    """A query failed or returned something that is not a number."""


class AnswerTooLarge(requests.RequestException):
    """Prometheus sent more than `MAX_ANSWER_BYTES`."""


class BoundedSession(requests.Session):
    """A `requests.Session` whose requests end within their timeout, body included.

    requests applies `timeout` to the connection and to each read, so a server that
    trickles its answer a few bytes at a time is never timed out, and a tick (and the
    `GroupedObserver` lock every tick waits on) would wait as long as it trickles. This
    session reads the body itself and gives up once `timeout` has passed since the request
    began (at worst one read later), or once the answer exceeds `MAX_ANSWER_BYTES`. The
    errors are requests' own (`ReadTimeout`, `ChunkedEncodingError`), so callers need not
    know.
    """

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:
        """`requests.Session.request`, with the whole answer read within `timeout`."""
        timeout = kwargs.get("timeout")
        started = time.monotonic()
        deadline = started + timeout if isinstance(timeout, int | float) else None
        response = super().request(method, url, *args, **{**kwargs, "stream": True})
        try:
            body = _read_body(response, deadline)
        except BaseException:
            response.close()  # drops the connection: the rest of the answer is unread
            raise
        # NOTE: `_content` is where requests keeps a read body (`Response.content`); the
        # client then parses it as usual. The connection goes back to the pool.
        response._content = body
        response._content_consumed = True
        response.close()
        return response


def _read_body(response: Any, deadline: float | None) -> bytes:
    """The body of a streamed `requests.Response`, read within `deadline` (monotonic s).

    Raises:
        requests.ReadTimeout: the deadline passed first.
        AnswerTooLarge: the body exceeds `MAX_ANSWER_BYTES`.
        requests.exceptions.ChunkedEncodingError: the connection closed mid-answer.
        requests.exceptions.ContentDecodingError: the body does not decode.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise requests.ReadTimeout("the answer did not arrive within the timeout")
        try:
            # read1: what has arrived (up to a chunk), so the deadline is checked between
            # reads even when the server sends a byte at a time.
            chunk = response.raw.read1(_READ_CHUNK, decode_content=True)
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise requests.ReadTimeout(exc) from exc
        except urllib3.exceptions.DecodeError as exc:
            raise requests.exceptions.ContentDecodingError(exc) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise requests.exceptions.ChunkedEncodingError(exc) from exc
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_ANSWER_BYTES:
            raise AnswerTooLarge(f"more than {MAX_ANSWER_BYTES} bytes")
        chunks.append(chunk)


def make_client(url: str, timeout_s: float) -> PrometheusConnect:
    """A `PrometheusConnect` with a timeout on every request, answer included, and no retries.

    The library retries failed requests 3 times with backoff by default; the loop runs
    again within seconds, so one attempt per query keeps a call within its timeout.
    `BoundedSession` makes the timeout hold for the whole answer, not for each read.

    Args:
        url: Prometheus base URL, e.g. http://prometheus-operated.monitoring:9090.
        timeout_s: seconds allowed per query.

    Returns:
        The client.
    """
    # NOTE: read=False makes a read timeout raise as itself (requests.ReadTimeout); with
    # only total=0, urllib3 wraps it in MaxRetryError, which requests reports as a
    # ConnectionError ("connection refused or reset" for a server that is merely slow).
    return PrometheusConnect(
        url=url,
        timeout=_whole_seconds(timeout_s),
        retry=Retry(total=0, read=False),
        session=BoundedSession(),
    )


def selector(namespace: str, name: str) -> str:
    """The label matcher selecting one LLMDeployment's pods, values escaped for PromQL."""
    return f'namespace="{_escape(namespace)}",llmdeployment="{_escape(name)}"'


def build_queries(
    engine: str, namespace: str, name: str, tokens_query: str | None = None
) -> EngineQueries:
    """The PromQL for one LLMDeployment.

    Args:
        engine: `vllm`, `tgi` or `llamacpp` (status.plan.engine).
        namespace: the LLMDeployment's namespace.
        name: the LLMDeployment's name.
        tokens_query: spec.scaling.tokensPerSecondQuery; `$namespace` and `$name` are
            substituted, and it replaces the engine's token-rate query.

    Returns:
        The queries.

    Raises:
        ValueError: for an unknown engine.
    """
    queries = _queries(engine, selector(namespace, name))
    if tokens_query:
        values = {"namespace": _escape(namespace), "name": _escape(name)}
        tokens = Template(tokens_query).safe_substitute(values)
        return replace(queries, output_tokens_per_second=tokens)
    return queries


# Every LLMDeployment's pods (the PodMonitor relabelling gives each the label).
ALL_LLMDEPLOYMENTS: Final = 'llmdeployment!=""'
GROUP_BY: Final = "by (namespace, llmdeployment)"


def _queries(engine: str, matcher: str, window: str = RATE_WINDOW) -> EngineQueries:
    """An engine's queries for a label matcher, aggregated by LLMDeployment; over a window
    other than the autoscaler's, the gauges are averaged over it too.

    Raises:
        ValueError: for an unknown engine.
    """
    try:
        templates = engines.get(engine).metrics
    except KeyError as err:
        raise ValueError(str(err)) from None
    sel = {"selector": matcher, "window": window}

    def agg(how: str, template: str) -> str:
        query = f"{how} {GROUP_BY} ({Template(template).substitute(sel)})"
        if window == RATE_WINDOW or "[$window]" in template:
            return query
        return f"avg_over_time(({query})[{window}:])"  # a gauge's mean over the window

    def mean(template: str | None) -> str | None:
        # NOTE: already aggregated per LLMDeployment (a histogram's sum over its count).
        return None if template is None else Template(template).substitute(sel, by=GROUP_BY)

    kv = templates.kv_cache_usage
    return EngineQueries(
        output_tokens_per_second=agg("sum", templates.output_tokens_per_second),
        running_requests=agg("sum", templates.running_requests),
        waiting_requests=agg("sum", templates.waiting_requests),
        kv_cache_usage=None if kv is None else agg("avg", kv),
        ttft_seconds=mean(templates.ttft_seconds),
        tpot_seconds=mean(templates.tpot_seconds),
    )


def _run(client: QueryClient, query: str, timeout_s: float) -> Any:
    """One instant query with its timeout (client side and Prometheus's own); the raw result.

    Raises:
        MetricsError: the request failed, timed out or was not answered with a query
            result (a sentence for a person).
    """
    seconds = _whole_seconds(timeout_s)
    try:
        return client.custom_query(query, params={"timeout": f"{seconds}s"}, timeout=seconds)
    # NOTE: custom_query reads `response.json()["data"]["result"]` unchecked: JSON without
    # them (`{"status":"error",...}` with HTTP 200, a list, null) raises KeyError/TypeError.
    except (requests.RequestException, PrometheusApiClientException, KeyError, TypeError) as exc:
        raise MetricsError(describe_failure(exc, getattr(client, "url", None), seconds)) from exc


def query_scalar(
    client: QueryClient, query: str, timeout_s: float, *, scalar_ok: bool = False
) -> float | None:
    """Run one instant query and sum its samples.

    Args:
        client: a `PrometheusConnect` (or anything with its `custom_query`).
        query: PromQL returning an instant vector (or a scalar, with `scalar_ok`).
        timeout_s: seconds allowed, sent to the client and to Prometheus.
        scalar_ok: accept a scalar result (a `tokensPerSecondQuery` may return one; the
            engines' queries return vectors, so a bare `[time, "value"]` is malformed).

    Returns:
        The sum of the returned samples (negative ones too); None when the result is
        empty (no series).

    Raises:
        MetricsError: when the request fails or times out, or the answer is malformed,
            holds a NaN or infinite sample, or holds the same series twice.
    """
    result = _run(client, query, timeout_s)
    try:
        samples = [(_labels(s), _value(s)) for s in _samples(result, scalar_ok)]
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise MetricsError(f"malformed result for {query!r}: {result!r:.200}") from exc
    _check_unique(query, [labels for labels, _ in samples])
    values = [v for _, v in samples]
    bad = next((v for v in values if not math.isfinite(v)), None)
    if bad is not None:
        raise MetricsError(f"no data for {query}: {non_finite(bad)}")
    return sum(values) if values else None


def non_finite(value: float) -> str:
    """The sentence for a NaN or infinite sample, the value spelt as Prometheus does."""
    text = "NaN" if math.isnan(value) else ("+Inf" if value > 0 else "-Inf")
    return f"Prometheus answered {text}, not a finite number"


def observe(
    client: QueryClient,
    engine: str,
    namespace: str,
    name: str,
    *,
    timeout_s: float,
    tokens_query: str | None = None,
) -> Observation:
    """The current load of one LLMDeployment.

    Args:
        client: a `PrometheusConnect` (see `make_client`).
        engine: `vllm`, `tgi` or `llamacpp`.
        namespace: the LLMDeployment's namespace.
        name: the LLMDeployment's name.
        timeout_s: seconds allowed per query.
        tokens_query: spec.scaling.tokensPerSecondQuery, if set.

    Returns:
        The observation; `Observation.available` is False (with the reason) when the token
        rate could not be read or had no data.
    """
    queries = build_queries(engine, namespace, name, tokens_query)
    try:
        tokens = query_scalar(
            client, queries.output_tokens_per_second, timeout_s, scalar_ok=bool(tokens_query)
        )
    except MetricsError as exc:
        return Observation.unavailable(str(exc))
    if tokens is None:
        return Observation.unavailable(f"no data for {queries.output_tokens_per_second}")
    return Observation(
        output_tokens_per_second=tokens,
        running_requests=_optional(client, queries.running_requests, timeout_s),
        waiting_requests=_optional(client, queries.waiting_requests, timeout_s),
        kv_cache_usage=_optional(client, queries.kv_cache_usage, timeout_s),
        ttft_seconds=_optional(client, queries.ttft_seconds, timeout_s),
        tpot_seconds=_optional(client, queries.tpot_seconds, timeout_s),
    )


# Prometheus's error answers carry `"error":"<text>"` (the client quotes the body).
_ERROR_FIELD: Final = re.compile(r'"error":\s*"((?:[^"\\]|\\.)*)"')


def describe_failure(exc: Exception, url: str | None, timeout_s: int) -> str:
    """A person's sentence for a failed query (not the client's URL-encoded traceback)."""
    where = f"Prometheus at {url}" if url else "Prometheus"
    if isinstance(exc, requests.Timeout):
        return f"{where} did not answer within {timeout_s} s"
    if isinstance(exc, AnswerTooLarge):
        return f"{where} answered more than {MAX_ANSWER_BYTES // 2**20} MiB"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return f"{where} closed the connection mid-answer"
    if isinstance(exc, requests.ConnectionError):
        return f"cannot connect to {where} (connection refused or reset)"
    if isinstance(exc, requests.exceptions.JSONDecodeError):
        return f"{where} answered something that is not JSON"
    if isinstance(exc, requests.exceptions.ContentDecodingError):
        return f"{where} answered a body that does not decode"
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"{where} answered HTTP {exc.response.status_code}"
    if isinstance(exc, PrometheusApiClientException):
        text = str(exc)
        code = text.split("HTTP Status Code", 1)[1].split()[0] if "HTTP Status Code" in text else ""
        error = _ERROR_FIELD.search(text)
        said = f" ({error.group(1)[:200]})" if error else ""
        return f"{where} answered HTTP {code}{said}" if code else f"{where} refused the query"
    if isinstance(exc, KeyError | TypeError):
        return f"{where} answered JSON that is not a query result (no data.result: {exc!r:.100})"
    return f"querying {where} failed ({type(exc).__name__})"


def query_by_llmdeployment(
    client: QueryClient, query: str, timeout_s: float
) -> dict[tuple[str, str], float]:
    """Run one instant query aggregated by (namespace, llmdeployment).

    Returns:
        The value per (namespace, llmdeployment), NaN and infinities included: they concern
        one object, whose observation says so (`GroupedObserver.observe`).

    Raises:
        MetricsError: when the request fails or times out, or the answer is malformed or
            holds one (namespace, llmdeployment) twice (nothing in it is trusted then).
    """
    result = _run(client, query, timeout_s)
    try:
        samples = [(_labels(s), _value(s)) for s in _samples(result, scalar_ok=False)]
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise MetricsError(f"malformed result for {query!r}: {result!r:.200}") from exc
    keys = [_key(dict(labels)) for labels, _ in samples]
    _check_unique(query, [(("namespace", ns), ("llmdeployment", name)) for ns, name in keys])
    return {key: value for key, (_, value) in zip(keys, samples, strict=True)}


def _key(labels: dict[str, str]) -> tuple[str, str]:
    return labels.get("namespace", ""), labels.get("llmdeployment", "")


@dataclass
class _Table:
    """One round of grouped queries for one engine: each signal by LLMDeployment."""

    at: float
    error: str | None = None
    tokens: dict[tuple[str, str], float] = field(default_factory=dict)
    running: dict[tuple[str, str], float] | None = None
    waiting: dict[tuple[str, str], float] | None = None
    kv: dict[tuple[str, str], float] | None = None
    ttft: dict[tuple[str, str], float] | None = None
    tpot: dict[tuple[str, str], float] | None = None

    def observation(self, key: tuple[str, str], tokens: float) -> Observation:
        """One LLMDeployment's row, with its (finite) token rate."""

        def aux(values: dict[tuple[str, str], float] | None) -> float | None:
            # A NaN gauge is as good as a failed query: the field is unknown.
            value = None if values is None else values.get(key)
            return value if value is not None and math.isfinite(value) else None

        return Observation(
            output_tokens_per_second=tokens,
            running_requests=aux(self.running),
            waiting_requests=aux(self.waiting),
            kv_cache_usage=aux(self.kv),
            ttft_seconds=aux(self.ttft),
            tpot_seconds=aux(self.tpot),
        )


class GroupedObserver:
    """Observations for every LLMDeployment from one query per metric and engine.

    The autoscaler ticks per LLMDeployment; asking Prometheus per object and signal costs
    N x 4 queries per interval. This asks each engine's four queries aggregated by
    (namespace, llmdeployment) at most once per `max_age_s`, and answers every object's
    tick from that table: the same numbers `observe` would read, so the same decisions.
    A custom `tokensPerSecondQuery` is still asked per object. Thread-safe (Kopf runs the
    timers on a thread pool).
    """

    def __init__(
        self,
        client: QueryClient,
        timeout_s: float,
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.timeout_s = timeout_s
        self.max_age_s = max_age_s
        self.clock = clock
        self._tables: dict[str, _Table] = {}
        self._lock = threading.Lock()

    def observe(
        self, engine: str, namespace: str, name: str, tokens_query: str | None = None
    ) -> Observation:
        """The current load of one LLMDeployment (see `observe`)."""
        if tokens_query:
            return observe(
                self.client,
                engine,
                namespace,
                name,
                timeout_s=self.timeout_s,
                tokens_query=tokens_query,
            )
        table = self._table(engine)
        if table.error is not None:
            return Observation.unavailable(table.error)
        key = (namespace, name)
        tokens = table.tokens.get(key)
        if tokens is None or not math.isfinite(tokens):
            query = _queries(engine, selector(namespace, name)).output_tokens_per_second
            why = "" if tokens is None else f": {non_finite(tokens)}"
            return Observation.unavailable(f"no data for {query}{why}")

        return table.observation(key, tokens)

    def _table(self, engine: str) -> _Table:
        with self._lock:
            now = self.clock()
            table = self._tables.get(engine)
            if table is None or now - table.at >= self.max_age_s:
                table = self._query(engine, now)
                self._tables[engine] = table
            return table

    def _query(self, engine: str, now: float) -> _Table:
        try:
            return _grouped(self.client, engine, self.timeout_s, RATE_WINDOW, now)
        except MetricsError as exc:
            return _Table(at=now, error=str(exc))


def _grouped(client: QueryClient, engine: str, timeout_s: float, window: str, at: float) -> _Table:
    """Each of an engine's queries once, by LLMDeployment.

    Raises:
        MetricsError: the token rate could not be read (the auxiliary signals may fail).
    """
    queries = _queries(engine, ALL_LLMDEPLOYMENTS, window)
    tokens = query_by_llmdeployment(client, queries.output_tokens_per_second, timeout_s)

    def optional(query: str | None) -> dict[tuple[str, str], float] | None:
        if query is None:
            return None
        try:
            return query_by_llmdeployment(client, query, timeout_s)
        except MetricsError:
            return None

    return _Table(
        at=at,
        tokens=tokens,
        running=optional(queries.running_requests),
        waiting=optional(queries.waiting_requests),
        kv=optional(queries.kv_cache_usage),
        ttft=optional(queries.ttft_seconds),
        tpot=optional(queries.tpot_seconds),
    )


def observe_fleet(
    client: QueryClient, engine: str, *, timeout_s: float, window: str
) -> dict[tuple[str, str], Observation]:
    """Every LLMDeployment of one engine over `window` (e.g. "1h"): rates and latency
    means over it, gauges averaged over it (`llmctl calibrate`).

    Raises:
        MetricsError: when Prometheus cannot be read.
    """
    table = _grouped(client, engine, timeout_s, window, 0.0)
    out: dict[tuple[str, str], Observation] = {}
    for key, tokens in table.tokens.items():
        if math.isfinite(tokens):
            out[key] = table.observation(key, tokens)
    return out


def _optional(client: QueryClient, query: str | None, timeout_s: float) -> float | None:
    """An auxiliary signal: a failure leaves it unknown rather than failing the whole read
    (None: the engine has no such metric)."""
    if query is None:
        return None
    try:
        return query_scalar(client, query, timeout_s)
    except MetricsError:
        return None


def _samples(result: Any, scalar_ok: bool) -> list[Any]:
    """The samples of an instant-query result.

    `custom_query` returns `data.result`: a list of samples for a vector, the bare
    `[time, "value"]` pair for a scalar (a `tokensPerSecondQuery` may return one) or a
    string (which looks the same: only `scalar_ok` callers take it).

    Raises:
        TypeError, ValueError: not an instant vector (or scalar, with `scalar_ok`).
    """
    if not isinstance(result, list):
        raise TypeError(f"unexpected result type {type(result).__name__}")
    if len(result) == 2 and _is_number(result[0]) and isinstance(result[1], str):
        if not scalar_ok:
            raise ValueError("a scalar or string where an instant vector was expected")
        return [{"metric": {}, "value": result}]
    return result


def _value(sample: Any) -> float:
    """The number in one sample, which Prometheus writes as `"value": [time, "text"]`.

    Raises:
        KeyError, TypeError, ValueError: anything else (e.g. a matrix's `values`).
    """
    pair = sample["value"]
    if not (isinstance(pair, list) and len(pair) == 2 and _is_number(pair[0])):
        raise ValueError(f"sample value {pair!r:.80} is not [time, value]")
    if not isinstance(pair[1], str):
        raise TypeError(f"sample value {pair[1]!r:.80} is not a string")
    return float(pair[1])


def _labels(sample: Any) -> tuple[tuple[str, str], ...]:
    """A sample's label set, sorted (`metric` may be absent for a scalar)."""
    metric = sample.get("metric") or {}
    if not isinstance(metric, dict):
        raise TypeError(f"sample labels {metric!r:.80} are not an object")
    return tuple(sorted((str(k), str(v)) for k, v in metric.items()))


def _check_unique(query: str, label_sets: list[tuple[tuple[str, str], ...]]) -> None:
    """Prometheus never answers one series twice (it refuses such a vector itself); an
    answer that does (a proxy merging two Prometheus, a broken federation) is not summed.

    Raises:
        MetricsError: naming the duplicated series.
    """
    seen: set[tuple[tuple[str, str], ...]] = set()
    for labels in label_sets:
        if labels in seen:
            shown = "{" + ",".join(f'{k}="{v}"' for k, v in labels) + "}"
            raise MetricsError(
                f"Prometheus answered the same series twice ({shown}) for {query}: "
                "a duplicated series is not summed"
            )
        seen.add(labels)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _whole_seconds(timeout_s: float) -> int:
    # NOTE: prometheus-api-client types its timeout as int; round up so it is never 0.
    return max(1, math.ceil(timeout_s))
