"""Model and GPU catalogs: typed loaders over the YAML data files in `catalog/data/`.

Each number in the data files cites its public source in a comment. Users replace a
catalog with their own file (`llmctl --gpu-catalog`, or the operator's ConfigMap mounted
as a file and named by `LLM_OPERATOR_GPU_CATALOG`, which the operator re-reads when it
changes: `catalog.reload`). Called by the planner, `llmctl` and the operator.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from llm_operator.api.v1alpha1 import Architecture

GIB = 2**30
GB = 10**9


class UnknownNameError(LookupError):
    """A model, GPU or quantization name that is not in the catalog.

    Attributes:
        kind: what was looked up ("model", "GPU", ...).
        name: the name as given.
        suggestions: the closest valid names, best first.
    """

    def __init__(self, kind: str, name: str, suggestions: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.suggestions = suggestions
        hint = f"; closest: {', '.join(suggestions)}" if suggestions else ""
        super().__init__(f"unknown {kind} {name!r}{hint}")


class CatalogError(ValueError):
    """A catalog file that cannot be read or does not match the schema.

    Attributes:
        origin: the file ("built-in gpus.yaml" for a built-in one).
        problem: what is wrong, each bad field named as written in the YAML
            (`gpus[3] (H100-SXM-80GB).memoryGB: Input should be greater than 0 (got -80)`).
    """

    def __init__(self, origin: str, problem: str) -> None:
        self.origin = origin
        self.problem = problem
        super().__init__(f"invalid catalog {origin}: {problem}")


class _Entry(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )


class ModelEntry(_Entry):
    """One model of the catalog."""

    name: str
    aliases: tuple[str, ...] = ()
    gguf: str | None = None
    architecture: Architecture


class GpuType(_Entry):
    """One accelerator (or CPU node class) of the catalog."""

    name: str
    aliases: tuple[str, ...] = ()
    kind: Literal["gpu", "cpu"] = "gpu"
    vendor: Literal["nvidia", "amd", "cpu"] = "nvidia"
    product_labels: tuple[str, ...] = ()
    memory_gb: float = Field(..., gt=0, alias="memoryGB")
    memory_gib: float = Field(..., gt=0, alias="memoryGiB")
    memory_bandwidth_gbps: float = Field(..., gt=0, alias="memoryBandwidthGBps")
    fp16_tflops: float = Field(..., gt=0)
    fp8_tflops: float | None = None
    int8_tops: float | None = None
    interconnect: Literal["nvlink", "pcie", "infinity-fabric", "none"] = "pcie"
    interconnect_gbps: float = Field(..., gt=0, alias="interconnectGBps")
    gpus_per_node: int = Field(..., ge=1)
    instance_type: str | None = None
    price_per_hour: float = Field(..., gt=0)
    price_date: str | None = None
    provisionable: bool = False

    @property
    def memory_bytes(self) -> int:
        """Memory the runtime sees, in bytes."""
        return int(self.memory_gib * GIB)

    @property
    def supports_fp8(self) -> bool:
        """Whether the GPU has FP8 tensor cores."""
        return self.fp8_tflops is not None

    @property
    def is_cpu(self) -> bool:
        """Whether this is a CPU node class rather than an accelerator."""
        return self.kind == "cpu"

    @property
    def accelerator(self) -> Literal["nvidia", "amd", "cpu"]:
        """The device family engines build images for: nvidia, amd or cpu."""
        if self.kind == "cpu":
            return "cpu"
        return "amd" if self.vendor == "amd" else "nvidia"


class Calibration(_Entry):
    """What one engine on one GPU type really takes, relative to the planner's prediction.

    Written by `llmctl calibrate` from what the fleet's engines measured (Prometheus) and
    loaded like a catalog (`llmctl --calibration`, the operator's calibration ConfigMap).
    The planner multiplies the time of every decode step by `decode` and of every prefill
    and request overhead by `prefill` (`Efficiency.calibrated`), so 1.5 means "50% slower
    than predicted". Bounded: a factor outside [1/20, 20] is a measuring error.

    Attributes:
        engine: vllm, tgi or llamacpp.
        gpu: the GPU catalog name (or an alias) it was measured on.
        decode: observed / predicted time per output token.
        prefill: observed / predicted time to first token.
        deployments: how many deployments the fit saw.
        fitted: when it was fitted (RFC 3339), for people.
    """

    engine: Literal["vllm", "tgi", "llamacpp"]
    gpu: str
    decode: float = Field(1.0, gt=0.05, lt=20.0)
    prefill: float = Field(1.0, gt=0.05, lt=20.0)
    deployments: int = Field(0, ge=0)
    fitted: str | None = None


class _ModelFile(_Entry):
    models: tuple[ModelEntry, ...]


class _GpuFile(_Entry):
    gpus: tuple[GpuType, ...]


class _CalibrationFile(_Entry):
    calibrations: tuple[Calibration, ...]


def _key(name: str) -> str:
    return name.strip().lower()


def _closest(name: str, names: Iterable[str]) -> list[str]:
    by_key = {_key(n): n for n in names}
    return [by_key[k] for k in difflib.get_close_matches(_key(name), by_key, n=3, cutoff=0.4)]


@dataclass(frozen=True)
class Catalog:
    """Models, GPUs and fleet calibrations, looked up by canonical name or alias,
    case-insensitively."""

    models: tuple[ModelEntry, ...]
    gpus: tuple[GpuType, ...]
    calibrations: tuple[Calibration, ...] = ()

    def calibration(self, engine: str, gpu: GpuType) -> Calibration | None:
        """The fleet calibration of `engine` on `gpu`, if one was loaded (the last entry
        for the pair wins)."""
        names = {_key(gpu.name), *map(_key, gpu.aliases)}
        found = [c for c in self.calibrations if c.engine == engine and _key(c.gpu) in names]
        return found[-1] if found else None

    def model(self, name: str) -> ModelEntry:
        """The model named `name` (id or alias).

        Raises:
            UnknownNameError: with the closest catalog names.
        """
        for entry in self.models:
            if _key(name) in {_key(entry.name), *map(_key, entry.aliases)}:
                return entry
        names = [n for e in self.models for n in (e.name, *e.aliases)]
        raise UnknownNameError("model", name, _closest(name, names))

    def gpu(self, name: str) -> GpuType:
        """The GPU type named `name` (id, alias, or a `nvidia.com/gpu.product` label value).

        Raises:
            UnknownNameError: with the closest catalog names.
        """
        for entry in self.gpus:
            if _key(name) in {_key(entry.name), *map(_key, entry.aliases)} | {
                _key(p) for p in entry.product_labels
            }:
                return entry
        names = [n for e in self.gpus for n in (e.name, *e.aliases)]
        raise UnknownNameError("GPU", name, _closest(name, names))


def _read(path: Path | None, default: str) -> tuple[str, str]:
    if path is None:
        text = resources.files("llm_operator.catalog").joinpath("data", default).read_text()
        return text, f"built-in {default}"
    try:
        return Path(path).read_text(), str(path)
    except OSError as err:
        raise CatalogError(str(path), f"cannot be read ({err.strerror})") from err


def _field(loc: tuple[int | str, ...], data: Any) -> str:
    """`gpus[3] (H100-SXM-80GB).memoryGB`: a pydantic location as written in the YAML, with
    the entry's name when it has one."""
    out, node = "", data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                out += f" ({node['name']})"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out


def _problems(err: ValidationError, data: Any, key: str) -> str:
    """One clause per field pydantic refused (at most five), each naming the field."""
    if not isinstance(data, dict):
        if data is None:
            return f"the file is empty; expected a mapping with a top-level `{key}:` list"
        return f"expected a mapping with a top-level `{key}:` list, got {type(data).__name__}"
    clauses = []
    for e in err.errors()[:5]:
        clause = f"{_field(e['loc'], data) or '<root>'}: {e['msg']}"
        if e["type"] not in ("missing", "extra_forbidden") and not isinstance(
            e.get("input"), dict | list
        ):
            clause += f" (got {e.get('input')!r})"
        clauses.append(clause)
    if err.error_count() > 5:
        clauses.append(f"and {err.error_count() - 5} more")
    return "; ".join(clauses)


def _parse(model: type[_Entry], key: str, text: str, origin: str) -> Any:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise CatalogError(origin, f"not valid YAML{where}: {problem}") from err
    try:
        return getattr(model.model_validate(data), key)
    except ValidationError as err:
        raise CatalogError(origin, _problems(err, data, key)) from err


def parse_models(text: str, origin: str = "models catalog") -> tuple[ModelEntry, ...]:
    """Parse a model catalog YAML text (a top-level `models` list).

    Raises:
        CatalogError: naming `origin` and each bad field (`models[2] (name).architecture...`).
    """
    models: tuple[ModelEntry, ...] = _parse(_ModelFile, "models", text, origin)
    return models


def parse_gpus(text: str, origin: str = "GPU catalog") -> tuple[GpuType, ...]:
    """Parse a GPU catalog YAML text (a top-level `gpus` list).

    Raises:
        CatalogError: naming `origin` and each bad field (`gpus[3] (H100).memoryGB: ...`).
    """
    gpus: tuple[GpuType, ...] = _parse(_GpuFile, "gpus", text, origin)
    return gpus


def parse_calibrations(text: str, origin: str = "calibration") -> tuple[Calibration, ...]:
    """Parse a calibration YAML text (a top-level `calibrations` list, `llmctl calibrate`).

    Raises:
        CatalogError: naming `origin` and each bad field (`calibrations[0].decode: ...`).
    """
    calibrations: tuple[Calibration, ...] = _parse(_CalibrationFile, "calibrations", text, origin)
    return calibrations


def parse_catalog(models_text: str, gpus_text: str, origin: str = "catalog") -> Catalog:
    """Parse catalog YAML texts.

    Args:
        models_text: YAML with a top-level `models` list.
        gpus_text: YAML with a top-level `gpus` list.
        origin: where the texts came from, for error messages.

    Raises:
        CatalogError: naming the file and the bad field.
    """
    return Catalog(
        models=parse_models(models_text, f"{origin} (models)"),
        gpus=parse_gpus(gpus_text, f"{origin} (gpus)"),
    )


@cache
def load_catalog(models_path: Path | None = None, gpus_path: Path | None = None) -> Catalog:
    """Load the built-in catalogs, or the files given instead.

    Args:
        models_path: a models YAML file replacing the built-in one.
        gpus_path: a GPU YAML file replacing the built-in one (prices, new types).
    """
    models_text, models_origin = _read(models_path, "models.yaml")
    gpus_text, gpus_origin = _read(gpus_path, "gpus.yaml")
    return Catalog(
        models=parse_models(models_text, models_origin),
        gpus=parse_gpus(gpus_text, gpus_origin),
    )
