"""Engine metrics for the autoscaler, read from Prometheus (prometheus-api-client).

`observe()` runs one instant query per signal (output tokens/s, running and waiting
requests, KV-cache usage) for one LLMDeployment and returns a plain
`decide.Observation`. Every query carries a timeout (client side and Prometheus's own
`timeout` parameter). A failed or empty token-rate query makes the whole observation
unavailable, which `decide()` answers by keeping the replica count; a failed auxiliary
query only leaves that field None. Called by the autoscaler loop; `make_client` builds the
`PrometheusConnect` it passes in. The operator asks through `GroupedObserver`: each
engine's queries aggregated by (namespace, llmdeployment) once per interval for every
LLMDeployment, not per object.

Series are selected by the target labels the PodMonitor relabelling gives every engine
pod, `namespace` and `llmdeployment` (the same labels e2e/sim/engine_sim.py writes). The
metric names and queries are each engine's own (`Engine.metrics` in
`llm_operator.engines`, which cites the engine's source).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from string import Template
from typing import Any, Final, Protocol

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

from llm_operator import engines
from llm_operator.autoscaler.decide import Observation
from llm_operator.engines import Metrics

RATE_WINDOW: Final = "1m"


EngineQueries = Metrics


class QueryClient(Protocol):
    """The part of `PrometheusConnect` this module uses (tests pass a fake)."""

    def custom_query(self, query: str, params: dict[str, Any], timeout: int) -> Any:
        """Run an instant query; return the `data.result` list."""


class MetricsError(Exception):
    """A query failed or returned something that is not a number."""


def make_client(url: str, timeout_s: float) -> PrometheusConnect:
    """A `PrometheusConnect` with a timeout on every request and no retries.

    The library retries failed requests 3 times with backoff by default; the loop runs
    again within seconds, so one attempt per query keeps a call within its timeout.

    Args:
        url: Prometheus base URL, e.g. http://prometheus-operated.monitoring:9090.
        timeout_s: seconds allowed per query.

    Returns:
        The client.
    """
    return PrometheusConnect(url=url, timeout=_whole_seconds(timeout_s), retry=Retry(total=0))


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
        return EngineQueries(
            output_tokens_per_second=tokens,
            running_requests=queries.running_requests,
            waiting_requests=queries.waiting_requests,
            kv_cache_usage=queries.kv_cache_usage,
        )
    return queries


# Every LLMDeployment's pods (the PodMonitor relabelling gives each the label).
ALL_LLMDEPLOYMENTS: Final = 'llmdeployment!=""'
GROUP_BY: Final = "by (namespace, llmdeployment)"


def _queries(engine: str, matcher: str) -> EngineQueries:
    """An engine's queries for a label matcher, aggregated by LLMDeployment.

    Raises:
        ValueError: for an unknown engine.
    """
    try:
        templates = engines.get(engine).metrics
    except KeyError as err:
        raise ValueError(str(err)) from None
    sel = {"selector": matcher, "window": RATE_WINDOW}

    def agg(how: str, template: str) -> str:
        return f"{how} {GROUP_BY} ({Template(template).substitute(sel)})"

    kv = templates.kv_cache_usage
    return EngineQueries(
        output_tokens_per_second=agg("sum", templates.output_tokens_per_second),
        running_requests=agg("sum", templates.running_requests),
        waiting_requests=agg("sum", templates.waiting_requests),
        kv_cache_usage=None if kv is None else agg("avg", kv),
    )


def _run(client: QueryClient, query: str, timeout_s: float) -> Any:
    """One instant query with its timeout (client side and Prometheus's own); the raw result.

    Raises:
        MetricsError: the request failed or timed out (a sentence for a person).
    """
    seconds = _whole_seconds(timeout_s)
    try:
        return client.custom_query(query, params={"timeout": f"{seconds}s"}, timeout=seconds)
    except (requests.RequestException, PrometheusApiClientException) as exc:
        raise MetricsError(describe_failure(exc, getattr(client, "url", None), seconds)) from exc


def query_scalar(client: QueryClient, query: str, timeout_s: float) -> float | None:
    """Run one instant query and sum its samples.

    Args:
        client: a `PrometheusConnect` (or anything with its `custom_query`).
        query: PromQL returning an instant vector or a scalar.
        timeout_s: seconds allowed, sent to the client and to Prometheus.

    Returns:
        The sum of the returned samples; None when the result is empty (no series) or NaN.

    Raises:
        MetricsError: when the request fails, times out or returns something malformed.
    """
    result = _run(client, query, timeout_s)
    try:
        values = [float(sample["value"][1]) for sample in _samples(result)]
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise MetricsError(f"malformed result for {query!r}: {result!r:.200}") from exc
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) if finite else None


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
        tokens = query_scalar(client, queries.output_tokens_per_second, timeout_s)
    except MetricsError as exc:
        return Observation.unavailable(str(exc))
    if tokens is None:
        return Observation.unavailable(f"no data for {queries.output_tokens_per_second}")
    return Observation(
        output_tokens_per_second=max(0.0, tokens),
        running_requests=_optional(client, queries.running_requests, timeout_s),
        waiting_requests=_optional(client, queries.waiting_requests, timeout_s),
        kv_cache_usage=(
            None
            if queries.kv_cache_usage is None
            else _optional(client, queries.kv_cache_usage, timeout_s)
        ),
    )


def describe_failure(exc: Exception, url: str | None, timeout_s: int) -> str:
    """A person's sentence for a failed query (not the client's URL-encoded traceback)."""
    where = f"Prometheus at {url}" if url else "Prometheus"
    if isinstance(exc, requests.Timeout):
        return f"{where} did not answer within {timeout_s} s"
    if isinstance(exc, requests.ConnectionError):
        return f"cannot connect to {where} (connection refused or reset)"
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        return f"{where} answered HTTP {exc.response.status_code}"
    if isinstance(exc, PrometheusApiClientException):
        text = str(exc)
        code = text.split("HTTP Status Code", 1)[1].split()[0] if "HTTP Status Code" in text else ""
        return f"{where} answered HTTP {code}" if code else f"{where} refused the query"
    return f"querying {where} failed ({type(exc).__name__})"


def query_by_llmdeployment(
    client: QueryClient, query: str, timeout_s: float
) -> dict[tuple[str, str], float]:
    """Run one instant query aggregated by (namespace, llmdeployment); NaN/Inf dropped.

    Raises:
        MetricsError: when the request fails, times out or returns something malformed.
    """
    result = _run(client, query, timeout_s)
    out: dict[tuple[str, str], float] = {}
    try:
        for sample in _samples(result):
            labels = sample.get("metric") or {}
            value = float(sample["value"][1])
            key = (str(labels.get("namespace", "")), str(labels.get("llmdeployment", "")))
            if math.isfinite(value):
                out[key] = out.get(key, 0.0) + value
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise MetricsError(f"malformed result for {query!r}: {result!r:.200}") from exc
    return out


@dataclass
class _Table:
    """One round of grouped queries for one engine: each signal by LLMDeployment."""

    at: float
    error: str | None = None
    tokens: dict[tuple[str, str], float] = field(default_factory=dict)
    running: dict[tuple[str, str], float] | None = None
    waiting: dict[tuple[str, str], float] | None = None
    kv: dict[tuple[str, str], float] | None = None


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
        if tokens is None:
            query = _queries(engine, selector(namespace, name)).output_tokens_per_second
            return Observation.unavailable(f"no data for {query}")

        def aux(values: dict[tuple[str, str], float] | None) -> float | None:
            value = None if values is None else values.get(key)
            return None if value is None else max(0.0, value)

        return Observation(
            output_tokens_per_second=max(0.0, tokens),
            running_requests=aux(table.running),
            waiting_requests=aux(table.waiting),
            kv_cache_usage=aux(table.kv),
        )

    def _table(self, engine: str) -> _Table:
        with self._lock:
            now = self.clock()
            table = self._tables.get(engine)
            if table is None or now - table.at >= self.max_age_s:
                table = self._query(engine, now)
                self._tables[engine] = table
            return table

    def _query(self, engine: str, now: float) -> _Table:
        queries = _queries(engine, ALL_LLMDEPLOYMENTS)
        try:
            tokens = query_by_llmdeployment(
                self.client, queries.output_tokens_per_second, self.timeout_s
            )
        except MetricsError as exc:
            return _Table(at=now, error=str(exc))

        def optional(query: str | None) -> dict[tuple[str, str], float] | None:
            if query is None:
                return None
            try:
                return query_by_llmdeployment(self.client, query, self.timeout_s)
            except MetricsError:
                return None

        return _Table(
            at=now,
            tokens=tokens,
            running=optional(queries.running_requests),
            waiting=optional(queries.waiting_requests),
            kv=optional(queries.kv_cache_usage),
        )


def _optional(client: QueryClient, query: str, timeout_s: float) -> float | None:
    """An auxiliary signal: a failure leaves it unknown rather than failing the whole read."""
    try:
        value = query_scalar(client, query, timeout_s)
    except MetricsError:
        return None
    return None if value is None else max(0.0, value)


def _samples(result: Any) -> list[Any]:
    """The samples of an instant-query result.

    `custom_query` returns `data.result`: a list of samples for a vector, the bare
    `[time, "value"]` pair for a scalar (a `tokensPerSecondQuery` may return one).
    """
    if not isinstance(result, list):
        raise TypeError(f"unexpected result type {type(result).__name__}")
    if len(result) == 2 and isinstance(result[0], int | float) and isinstance(result[1], str):
        return [{"value": result}]
    return result


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _whole_seconds(timeout_s: float) -> int:
    # NOTE: prometheus-api-client types its timeout as int; round up so it is never 0.
    return max(1, math.ceil(timeout_s))
