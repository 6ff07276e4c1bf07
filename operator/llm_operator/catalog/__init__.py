"""Model and GPU catalogs: typed loaders over the YAML data files in `catalog/data/`.

Each number in the data files cites its public source in a comment. Users replace a
catalog with their own file (`llmctl --gpu-catalog`, or the operator's ConfigMap mounted
as a file and named by `LLM_OPERATOR_GPU_CATALOG`). Called by the planner, `llmctl` and
the operator.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Literal

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
    """A catalog file that cannot be read or does not match the schema."""


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


class _ModelFile(_Entry):
    models: tuple[ModelEntry, ...]


class _GpuFile(_Entry):
    gpus: tuple[GpuType, ...]


def _key(name: str) -> str:
    return name.strip().lower()


def _closest(name: str, names: Iterable[str]) -> list[str]:
    by_key = {_key(n): n for n in names}
    return [by_key[k] for k in difflib.get_close_matches(_key(name), by_key, n=3, cutoff=0.4)]


@dataclass(frozen=True)
class Catalog:
    """Models and GPUs, looked up by canonical name or alias, case-insensitively."""

    models: tuple[ModelEntry, ...]
    gpus: tuple[GpuType, ...]

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
        raise CatalogError(f"cannot read catalog {path}: {err.strerror}") from err


def parse_catalog(models_text: str, gpus_text: str, origin: str = "catalog") -> Catalog:
    """Parse catalog YAML texts.

    Args:
        models_text: YAML with a top-level `models` list.
        gpus_text: YAML with a top-level `gpus` list.
        origin: where the texts came from, for error messages.

    Raises:
        CatalogError: naming the file and the bad field.
    """
    try:
        models = _ModelFile.model_validate(yaml.safe_load(models_text)).models
        gpus = _GpuFile.model_validate(yaml.safe_load(gpus_text)).gpus
    except (yaml.YAMLError, ValidationError) as err:
        raise CatalogError(f"invalid {origin}: {err}") from err
    return Catalog(models=models, gpus=gpus)


@cache
def load_catalog(models_path: Path | None = None, gpus_path: Path | None = None) -> Catalog:
    """Load the built-in catalogs, or the files given instead.

    Args:
        models_path: a models YAML file replacing the built-in one.
        gpus_path: a GPU YAML file replacing the built-in one (prices, new types).
    """
    models_text, models_origin = _read(models_path, "models.yaml")
    gpus_text, gpus_origin = _read(gpus_path, "gpus.yaml")
    return parse_catalog(models_text, gpus_text, f"{models_origin} / {gpus_origin}")
