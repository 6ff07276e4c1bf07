"""Operator settings, read once from the environment into one frozen dataclass.

Called by `__main__` (to configure Kopf) and by the handlers (to reach catalogs, field
manager and Prometheus). Every variable is prefixed `LLM_OPERATOR_`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

FIELD_MANAGER = "llm-operator"
ANNOTATION_PREFIX = "serving.llm-operator.io"


def parse_images(text: str) -> dict[str, str]:
    """ "llamacpp-cpu=img:tag,vllm-nvidia=img:tag" -> {"llamacpp-cpu": "img:tag", ...}.

    Raises:
        ValueError: an item is not key=image.
    """
    out: dict[str, str] = {}
    for item in filter(None, (i.strip() for i in text.split(","))):
        key, sep, image = item.partition("=")
        if not sep or not key.strip() or not image.strip():
            raise ValueError(
                f"LLM_OPERATOR_ENGINE_IMAGES: {item!r} is not <engine>-<accelerator>=<image>"
            )
        out[key.strip()] = image.strip()
    return out


def parse_object_ref(name: str, text: str) -> tuple[str, str] | None:
    """ "namespace/name" -> ("namespace", "name"); "" -> None.

    Raises:
        ValueError: not namespace/name.
    """
    text = text.strip()
    if not text:
        return None
    namespace, sep, obj = text.partition("/")
    if not sep or not namespace or not obj or "/" in obj:
        raise ValueError(f"{name}: {text!r} is not <namespace>/<name>")
    return namespace, obj


def _path(name: str) -> Path | None:
    value = os.environ.get(name, "").strip()
    return Path(value) if value else None


@dataclass(frozen=True)
class Settings:
    """Runtime configuration of the operator.

    Attributes:
        namespace: watch only this namespace; empty watches all.
        gpu_catalog: GPU catalog file (the chart mounts its ConfigMap here); None: built-in.
        model_catalog: model catalog file; None: built-in.
        gpu_catalog_configmap: (namespace, name) of the ConfigMap mounted at gpu_catalog,
            from LLM_OPERATOR_GPU_CATALOG_CONFIGMAP="namespace/name": catalog reload events
            are posted on it; None: reported in the log and metrics only.
        model_catalog_configmap: the same for model_catalog
            (LLM_OPERATOR_MODEL_CATALOG_CONFIGMAP).
        calibration: fleet calibration file (`llmctl calibrate`; the chart mounts its
            ConfigMap here, LLM_OPERATOR_CALIBRATION); None: the planner's own
            efficiencies.
        calibration_configmap: the ConfigMap mounted at calibration
            (LLM_OPERATOR_CALIBRATION_CONFIGMAP), for reload events.
        self_calibrate_interval_s: the operator fits the fleet calibration itself this
            often, as `llmctl calibrate` would, uses it at once and writes it to
            calibration_configmap (LLM_OPERATOR_SELF_CALIBRATE_INTERVAL); 0: never (the
            default: a calibration is then only what a person or a job provides).
        self_calibrate_window: the PromQL duration that fit averages over
            (LLM_OPERATOR_SELF_CALIBRATE_WINDOW, 1h).
        catalog_check_interval_s: custom catalog files are re-read at most this often, by
            the first reconcile pass after it (LLM_OPERATOR_CATALOG_CHECK_INTERVAL).
        prometheus_url: where the autoscaler queries engine metrics; empty disables it.
        metrics_port: port of the operator's own Prometheus metrics.
        health_port: port of the liveness endpoint (/healthz).
        reconcile_interval_s: how often every LLMDeployment is fully re-checked (a safety
            net: changes of the children are watched and handled as they happen).
        autoscale_interval_s: how often the autoscaler runs per LLMDeployment.
        query_timeout_s: timeout of each Prometheus query.
        prediction_tolerance: |observed / predicted - 1| of TTFT, TPOT or tokens/s beyond
            which a PredictionDiverged event is posted (LLM_OPERATOR_PREDICTION_TOLERANCE).
        secret_cache_ttl_s: how long the key names read of a token Secret are reused before
            it is read again (LLM_OPERATOR_SECRET_CACHE_TTL, 30 s): a Secret created or
            fixed later is seen within that time.
        api_timeout_s: timeout of each Kubernetes API request (the read; connecting gets
            at most 10 s), the operator's and Kopf's.
        peering: Kopf peering name for HA ("" runs standalone).
        monitoring: render PodMonitors (Prometheus Operator present).
        allow_privileged_overrides: let overrides.podTemplatePatch reach the host or raise
            privileges (the install-time opt-in; docs/security.md).
        engine_images: "<engine>-<accelerator>" -> image replacing the pinned upstream
            reference (a registry mirror; the e2e real node's local build), from
            LLM_OPERATOR_ENGINE_IMAGES="llamacpp-cpu=registry/llama.cpp:server-b10380,...".
        hub_cache_dir: where config.json files read from the Hugging Face Hub are kept
            (huggingface_hub's cache layout); under /tmp, the pod's only writable path.
        hub_timeout_s: timeout of each request to the Hub (HF_ENDPOINT, HF_HUB_OFFLINE
            are honoured as huggingface_hub defines them).
    """

    namespace: str = ""
    gpu_catalog: Path | None = None
    model_catalog: Path | None = None
    gpu_catalog_configmap: tuple[str, str] | None = None
    model_catalog_configmap: tuple[str, str] | None = None
    calibration: Path | None = None
    calibration_configmap: tuple[str, str] | None = None
    self_calibrate_interval_s: float = 0.0
    self_calibrate_window: str = "1h"
    catalog_check_interval_s: float = 5.0
    prometheus_url: str = ""
    metrics_port: int = 8080
    health_port: int = 8081
    reconcile_interval_s: float = 300.0
    autoscale_interval_s: float = 15.0
    query_timeout_s: float = 5.0
    prediction_tolerance: float = 0.25
    api_timeout_s: float = 30.0
    secret_cache_ttl_s: float = 30.0
    peering: str = ""
    monitoring: bool = False
    allow_privileged_overrides: bool = False
    engine_images: dict[str, str] = field(default_factory=dict)
    hub_cache_dir: Path = Path("/tmp/llm-operator/hub")
    hub_timeout_s: float = 10.0

    @classmethod
    def from_env(cls) -> Settings:
        """Settings from `LLM_OPERATOR_*` environment variables."""
        env = os.environ.get
        return cls(
            namespace=env("LLM_OPERATOR_NAMESPACE", ""),
            gpu_catalog=_path("LLM_OPERATOR_GPU_CATALOG"),
            model_catalog=_path("LLM_OPERATOR_MODEL_CATALOG"),
            gpu_catalog_configmap=parse_object_ref(
                "LLM_OPERATOR_GPU_CATALOG_CONFIGMAP", env("LLM_OPERATOR_GPU_CATALOG_CONFIGMAP", "")
            ),
            model_catalog_configmap=parse_object_ref(
                "LLM_OPERATOR_MODEL_CATALOG_CONFIGMAP",
                env("LLM_OPERATOR_MODEL_CATALOG_CONFIGMAP", ""),
            ),
            calibration=_path("LLM_OPERATOR_CALIBRATION"),
            calibration_configmap=parse_object_ref(
                "LLM_OPERATOR_CALIBRATION_CONFIGMAP", env("LLM_OPERATOR_CALIBRATION_CONFIGMAP", "")
            ),
            self_calibrate_interval_s=float(env("LLM_OPERATOR_SELF_CALIBRATE_INTERVAL", "0")),
            self_calibrate_window=env("LLM_OPERATOR_SELF_CALIBRATE_WINDOW", "1h"),
            catalog_check_interval_s=float(env("LLM_OPERATOR_CATALOG_CHECK_INTERVAL", "5")),
            prometheus_url=env("LLM_OPERATOR_PROMETHEUS_URL", ""),
            metrics_port=int(env("LLM_OPERATOR_METRICS_PORT", "8080")),
            health_port=int(env("LLM_OPERATOR_HEALTH_PORT", "8081")),
            reconcile_interval_s=float(env("LLM_OPERATOR_RECONCILE_INTERVAL", "300")),
            autoscale_interval_s=float(env("LLM_OPERATOR_AUTOSCALE_INTERVAL", "15")),
            query_timeout_s=float(env("LLM_OPERATOR_QUERY_TIMEOUT", "5")),
            prediction_tolerance=float(env("LLM_OPERATOR_PREDICTION_TOLERANCE", "0.25")),
            api_timeout_s=float(env("LLM_OPERATOR_API_TIMEOUT", "30")),
            secret_cache_ttl_s=float(env("LLM_OPERATOR_SECRET_CACHE_TTL", "30")),
            peering=env("LLM_OPERATOR_PEERING", ""),
            monitoring=env("LLM_OPERATOR_MONITORING", "false").lower() == "true",
            allow_privileged_overrides=(
                env("LLM_OPERATOR_ALLOW_PRIVILEGED_OVERRIDES", "false").lower() == "true"
            ),
            engine_images=parse_images(env("LLM_OPERATOR_ENGINE_IMAGES", "")),
            hub_cache_dir=_path("LLM_OPERATOR_HUB_CACHE") or Path("/tmp/llm-operator/hub"),
            hub_timeout_s=float(env("LLM_OPERATOR_HUB_TIMEOUT", "10")),
        )
