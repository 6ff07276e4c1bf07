"""Prometheus queries of the autoscaler, against a fake `PrometheusConnect` (no network)."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_api_client.exceptions import PrometheusApiClientException

from llm_operator.autoscaler import metrics
from llm_operator.autoscaler.decide import unreliable
from llm_operator.autoscaler.metrics import build_queries, make_client, observe
from tests.fakes import Answer, FakePrometheus, vector

ROOT = Path(__file__).resolve().parent.parent
SIMULATOR = ROOT / "e2e" / "sim" / "engine_sim.py"


def test_vllm_queries_select_one_llmdeployment() -> None:
    q = build_queries("vllm", "team-a", "chat")
    sel = '{namespace="team-a",llmdeployment="chat"}'
    by = "by (namespace, llmdeployment)"
    assert q.output_tokens_per_second == f"sum {by} (rate(vllm:generation_tokens_total{sel}[1m]))"
    assert q.running_requests == f"sum {by} (vllm:num_requests_running{sel})"
    assert q.waiting_requests == f"sum {by} (vllm:num_requests_waiting{sel})"
    assert q.kv_cache_usage == (
        f"avg {by} (vllm:kv_cache_usage_perc{sel} or vllm:gpu_cache_usage_perc{sel})"
    )


def test_tgi_and_llamacpp_queries() -> None:
    tgi = build_queries("tgi", "ns", "m")
    assert tgi.output_tokens_per_second.startswith(
        "sum by (namespace, llmdeployment) (rate(tgi_request_generated_tokens_sum{"
    )
    assert "tgi_queue_size" in tgi.waiting_requests
    assert "tgi_batch_current_size" in tgi.running_requests
    assert tgi.kv_cache_usage is None
    cpp = build_queries("llamacpp", "ns", "m")
    assert "llamacpp:tokens_predicted_total" in cpp.output_tokens_per_second
    assert "llamacpp:requests_deferred" in cpp.waiting_requests
    assert "llamacpp:requests_processing" in cpp.running_requests


def test_override_replaces_the_token_query_only() -> None:
    override = 'sum(rate(gateway_output_tokens_total{ns="$namespace",route="$name"}[2m]))'
    q = build_queries("vllm", "ns", "chat", tokens_query=override)
    assert q.output_tokens_per_second == (
        'sum(rate(gateway_output_tokens_total{ns="ns",route="chat"}[2m]))'
    )
    assert "vllm:num_requests_waiting" in q.waiting_requests


def test_label_values_are_escaped() -> None:
    assert metrics.selector('a"b', "c\\d") == 'namespace="a\\"b",llmdeployment="c\\\\d"'


def test_unknown_engine_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown engine 'ollama'"):
        build_queries("ollama", "ns", "m")


@pytest.mark.parametrize("engine", ["vllm", "tgi", "llamacpp"])
def test_metric_names_are_the_ones_the_simulator_exposes(engine: str) -> None:
    """The e2e simulator writes the engines' real names; every query must use them."""
    source = SIMULATOR.read_text()
    exposed = set(re.findall(r'"((?:vllm:|tgi_|llamacpp:)[a-z_]+)"', source))
    q = build_queries(engine, "ns", "m")
    queries = (q.output_tokens_per_second, q.running_requests, q.waiting_requests,
               q.ttft_seconds, q.tpot_seconds)  # fmt: skip
    for query in filter(None, queries):
        names = re.findall(r"((?:vllm:|tgi_|llamacpp:)[a-z_]+)\{", query)
        assert names, query
        for name in names:
            base = re.sub(r"_(total|sum|count|bucket)$", "", name)
            assert name in exposed or base in exposed, (name, sorted(exposed))
    assert "namespace" in source and "llmdeployment" in source


def test_observe_reads_every_signal_with_a_timeout() -> None:
    fake = FakePrometheus(
        {
            "generation_tokens": vector(1234.5),
            "num_requests_running": vector(30),
            "num_requests_waiting": vector(4),
            "kv_cache_usage_perc": vector(0.75),
            "time_to_first_token": vector(0.21),
            "request_time_per_output_token": vector(0.034),
        }
    )
    obs = observe(fake, "vllm", "ns", "chat", timeout_s=2.5)
    assert obs.available
    assert obs.output_tokens_per_second == pytest.approx(1234.5)
    assert (obs.running_requests, obs.waiting_requests) == (30.0, 4.0)
    assert obs.kv_cache_usage == pytest.approx(0.75)
    assert (obs.ttft_seconds, obs.tpot_seconds) == (0.21, 0.034)
    assert len(fake.calls) == 6
    for _, params, timeout in fake.calls:
        assert timeout == 3  # rounded up, never 0
        assert params == {"timeout": "3s"}  # Prometheus's own evaluation timeout


def test_latency_means_are_a_histograms_sum_over_its_count_per_llmdeployment() -> None:
    queries = metrics.build_queries("vllm", "ns", "chat")
    sel = 'namespace="ns",llmdeployment="chat"'
    by = "by (namespace, llmdeployment)"
    assert queries.ttft_seconds == (
        f"sum {by} (rate(vllm:time_to_first_token_seconds_sum{{{sel}}}[1m])) / "
        f"sum {by} (rate(vllm:time_to_first_token_seconds_count{{{sel}}}[1m]))"
    )
    assert "tokens_predicted_seconds_total" in str(metrics.build_queries("llamacpp", "a", "b"))
    tgi = metrics.build_queries("tgi", "a", "b")
    assert tgi.ttft_seconds is None and tgi.tpot_seconds is not None


def test_tgi_has_no_kv_query() -> None:
    fake = FakePrometheus({"tgi_request_generated_tokens": vector(10)})
    obs = observe(fake, "tgi", "ns", "m", timeout_s=1)
    assert obs.kv_cache_usage is None
    assert not any("kv" in q for q, _, _ in fake.calls)


def test_samples_of_several_series_are_summed() -> None:
    series = [
        {"metric": {"pod": pod}, "value": [1700000000.0, value]}
        for pod, value in (("a", "100"), ("b", "250"))
    ]
    fake = FakePrometheus({"tokens_predicted": series})
    assert observe(fake, "llamacpp", "ns", "m", timeout_s=1).output_tokens_per_second == 350.0


def test_the_same_series_twice_is_not_summed() -> None:
    fake = FakePrometheus({"tokens_predicted": vector(100, 250)})  # both labelled {}
    obs = observe(fake, "llamacpp", "ns", "m", timeout_s=1)
    assert not obs.available and "the same series twice" in obs.unavailable_reason


def test_scalar_result_from_an_override() -> None:
    fake = FakePrometheus({"scalar(": [1700000000.0, "42"]})
    obs = observe(fake, "vllm", "ns", "m", timeout_s=1, tokens_query="scalar(vector(42))")
    assert obs.output_tokens_per_second == 42.0


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ([], "no data"),
        (vector("NaN"), "no data"),
        (requests.ConnectionError("connection refused"), "cannot connect to Prometheus"),
        (requests.Timeout("read timed out"), "did not answer within 1 s"),
        (PrometheusApiClientException("HTTP Status Code 503 (b'x')"), "answered HTTP 503"),
        ([{"metric": {}}], "malformed"),
        ({"unexpected": True}, "malformed"),
    ],
)
def test_failed_or_empty_token_query_is_unavailable(answer: Answer, why: str) -> None:
    fake = FakePrometheus({"generation_tokens": answer}, default=vector(1))
    obs = observe(fake, "vllm", "ns", "m", timeout_s=1)
    assert not obs.available
    assert obs.output_tokens_per_second is None
    assert why in obs.unavailable_reason
    assert len(fake.calls) == 1  # nothing else is asked once the rate is missing


def test_failed_auxiliary_query_leaves_that_field_unknown() -> None:
    fake = FakePrometheus(
        {
            "generation_tokens": vector(500),
            "num_requests_waiting": requests.Timeout("slow"),
            "kv_cache_usage_perc": [],
        },
        default=vector(7),
    )
    obs = observe(fake, "vllm", "ns", "m", timeout_s=1)
    assert obs.output_tokens_per_second == 500.0
    assert obs.running_requests == 7.0
    assert obs.waiting_requests is None
    assert obs.kv_cache_usage is None


def test_negative_rates_are_passed_on_for_decide_to_refuse() -> None:
    # rate() is never negative, but an override (deriv, delta) can be: not clamped into
    # "no load" (a scale-down), refused by decide.unreliable (a hold).
    fake = FakePrometheus({"generation_tokens": vector(-3)}, default=vector(0))
    obs = observe(fake, "vllm", "ns", "m", timeout_s=1)
    assert obs.output_tokens_per_second == -3.0
    assert "negative" in (unreliable(obs, replicas=1, planned=1000.0) or "")


def test_unreachable_prometheus_is_unavailable_at_once() -> None:
    # A closed local port refuses the connection; with no retries the answer is immediate.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = make_client(f"http://127.0.0.1:{port}", timeout_s=2)
    started = time.monotonic()
    obs = observe(client, "vllm", "ns", "m", timeout_s=2)
    assert time.monotonic() - started < 1.5
    assert not obs.available
    # A sentence for a person, naming where it looked, not the client's traceback.
    assert obs.unavailable_reason == (
        f"cannot connect to Prometheus at http://127.0.0.1:{port} (connection refused or reset)"
    )


def _labelled(**values: float) -> list[dict[str, Any]]:
    """A grouped answer: one sample per "namespace/name" key."""
    return [
        {"metric": dict(zip(("namespace", "llmdeployment"), k.split("/"), strict=True)),
         "value": [1700000000.0, str(v)]}
        for k, v in values.items()
    ]  # fmt: skip


def test_grouped_observer_asks_once_per_metric_for_every_llmdeployment() -> None:
    fake = FakePrometheus(
        {
            "generation_tokens": _labelled(**{"a/m1": 100.0, "a/m2": 250.0, "b/m1": 7.0}),
            "num_requests_waiting": _labelled(**{"a/m1": 3.0}),
            "kv_cache_usage_perc": requests.Timeout("slow"),
        },
        default=_labelled(**{"a/m1": 1.0, "a/m2": 2.0, "b/m1": 0.0}),
    )
    now = [0.0]
    grouped = metrics.GroupedObserver(fake, timeout_s=2, max_age_s=10, clock=lambda: now[0])
    first = grouped.observe("vllm", "a", "m1")
    second = grouped.observe("vllm", "a", "m2")
    other = grouped.observe("vllm", "b", "m1")
    assert len(fake.calls) == 6  # tokens, running, waiting, KV, TTFT, TPOT: once for all three
    assert all('llmdeployment!=""' in q for q, _, _ in fake.calls)
    assert (first.output_tokens_per_second, first.waiting_requests) == (100.0, 3.0)
    assert first.kv_cache_usage is None  # a failed auxiliary query leaves only it unknown
    assert second.output_tokens_per_second == 250.0 and second.waiting_requests is None
    assert other.output_tokens_per_second == 7.0
    # The same numbers the per-object queries give (what decide() sees is unchanged).
    single = FakePrometheus(
        {"generation_tokens": vector(100.0), "num_requests_waiting": vector(3.0)},
        default=vector(1.0),
    )
    alone = observe(single, "vllm", "a", "m1", timeout_s=2)
    assert (alone.output_tokens_per_second, alone.waiting_requests) == (100.0, 3.0)
    # Missing object: unavailable with the query it would have asked.
    missing = grouped.observe("vllm", "c", "gone")
    assert not missing.available and 'llmdeployment="gone"' in (missing.unavailable_reason or "")
    assert len(fake.calls) == 6
    now[0] = 11.0  # the table aged: asked again, once
    grouped.observe("vllm", "a", "m1")
    assert len(fake.calls) == 12


def test_grouped_observer_failure_makes_everyone_unavailable() -> None:
    fake = FakePrometheus({"tgi_request_generated_tokens": requests.ConnectionError("refused")})
    grouped = metrics.GroupedObserver(fake, timeout_s=1, max_age_s=10)
    a, b = grouped.observe("tgi", "a", "m"), grouped.observe("tgi", "b", "m")
    assert not a.available and not b.available
    assert "cannot connect to Prometheus" in (a.unavailable_reason or "")
    assert len(fake.calls) == 1
