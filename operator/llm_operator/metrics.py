"""The operator's own Prometheus metrics (prometheus-client), served on the metrics port.

Updated by the handlers (reconcile passes, catalog reloads) and the autoscaler loop; names are
prefixed `llm_operator_`.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("llm_operator_reconcile_total", "Reconcile passes by result", ["result"])
RECONCILE_SECONDS = Histogram(
    "llm_operator_reconcile_duration_seconds", "Duration of one reconcile pass"
)
API_WRITES = Counter(
    "llm_operator_api_writes_total", "Objects applied or deleted by the operator", ["verb"]
)
PLANNED_COST = Gauge(
    "llm_operator_planned_cost_per_hour_dollars",
    "Predicted USD per hour of all desired replicas",
    ["namespace", "name"],
)
REPLICAS = Gauge(
    "llm_operator_replicas", "Replicas per LLMDeployment", ["namespace", "name", "state"]
)
AUTOSCALER_TICKS = Counter(
    "llm_operator_autoscaler_ticks_total", "Autoscaler ticks by outcome", ["reason"]
)
OBSERVED_TOKENS = Gauge(
    "llm_operator_observed_output_tokens_per_second",
    "Output tokens/s observed by the autoscaler",
    ["namespace", "name"],
)
PREDICTION_ERROR = Gauge(
    "llm_operator_prediction_error_ratio",
    "Observed / predicted - 1 at the observed load per LLMDeployment (ttft, tpot, "
    "tokens_per_second per replica); absent without measurements",
    ["namespace", "name", "metric"],
)
IN_FLIGHT = Gauge(
    "llm_operator_reconciles_in_flight",
    "Reconcile and autoscaler passes running, and those waiting for their object's lock",
    ["state"],
)
CATALOG_LOAD_FAILURES = Counter(
    "llm_operator_catalog_load_failures_total",
    "Catalog file contents refused at runtime (bad YAML, schema, unreadable), once per change",
    ["catalog"],
)
CATALOG_VALID = Gauge(
    "llm_operator_catalog_valid",
    "1 when the catalog file's current content is in use, 0 while the last good one is kept",
    ["catalog"],
)
CATALOG_LAST_GOOD = Gauge(
    "llm_operator_catalog_last_good_timestamp_seconds",
    "When the catalog in use was loaded (Unix time)",
    ["catalog"],
)
