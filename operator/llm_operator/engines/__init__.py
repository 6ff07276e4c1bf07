"""The serving engines the operator deploys, each in one module behind one interface.

`ENGINES` maps the API's engine names to their `Engine` (vllm, tgi, llamacpp); the
planner, the renderer, the autoscaler and the API's validation all ask it, so adding an
engine or bumping a version touches one module and its tests. `support_matrix()` renders
the capability matrix as the Markdown table in docs/engines.md (a test keeps them equal).
Pure: no I/O.
"""

from __future__ import annotations

from llm_operator.engines import llamacpp, tgi, vllm
from llm_operator.engines.base import (
    ACCELERATORS,
    Accelerator,
    Ask,
    Capabilities,
    Efficiency,
    Engine,
    EngineMemory,
    Launch,
    Lora,
    Metrics,
    QuantSupport,
    Refusal,
    Speculative,
)

ENGINES: dict[str, Engine] = {e.name: e for e in (vllm.ENGINE, tgi.ENGINE, llamacpp.ENGINE)}
# The order `engine: auto` tries them in (ties in cost go to the earlier one).
PREFERENCE: tuple[str, ...] = ("vllm", "tgi", "llamacpp")


def get(name: str) -> Engine:
    """The engine called `name`.

    Raises:
        KeyError: naming the known engines.
    """
    try:
        return ENGINES[name]
    except KeyError:
        raise KeyError(f"unknown engine {name!r}; known: {', '.join(ENGINES)}") from None


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def support_matrix() -> str:
    """The capability matrix of every engine as a Markdown table (docs/engines.md)."""
    quants = sorted({q for e in ENGINES.values() for q in e.capabilities.quantizations})
    head = ["", *(f"{e.name} {e.version}" for e in ENGINES.values())]
    rows: list[list[str]] = []

    def row(label: str, cell: object) -> None:
        rows.append([label, *(str(cell(e)) for e in ENGINES.values())])  # type: ignore[operator]

    for q in quants:

        def quant_cell(e: Engine, q: str = q) -> str:
            support = e.capabilities.quantizations.get(q)
            if support is None:
                return "-"
            how = []
            if support.on_the_fly:
                how.append("16-bit checkpoint" if e.name != "llamacpp" else "GGUF")
            if support.from_checkpoint and e.name != "llamacpp":
                how.append(f"{q} checkpoint")
            where = "/".join(a for a in ACCELERATORS if a in support.accelerators)
            return f"{' or '.join(how)} ({where})"

        row(f"quantization `{q}`", quant_cell)
    row(
        "accelerators (image)",
        lambda e: ", ".join(f"{a}: `{e.images[a]}`" for a in ACCELERATORS if a in e.images),
    )
    row("tensor parallel", lambda e: _yes(e.capabilities.tensor_parallel))
    row("pipeline parallel", lambda e: _yes(e.capabilities.pipeline_parallel))
    row("multi-node replica", lambda e: _yes(e.capabilities.multi_node))
    row("prefix caching on/off", lambda e: _yes(e.capabilities.prefix_caching))
    row(
        "8-bit KV cache",
        lambda e: (
            ", ".join(f"{k} on {a}" for a, k in e.capabilities.kv_cache_dtypes.items()) or "no"
        ),
    )
    row("LoRA adapters", lambda e: _yes(e.capabilities.lora))
    row(
        "speculative decoding",
        lambda e: ", ".join(sorted(e.capabilities.speculative_methods)) or "no",
    )
    row("model sources", lambda e: ", ".join(sorted(e.capabilities.model_sources)))
    row(
        "shared model cache (download Job)",
        lambda e: _yes(e.download_command("org/model", None) is not None),
    )
    row(
        "float16 refused for",
        lambda e: ", ".join(sorted(e.capabilities.float16_refused)) or "-",
    )
    row("Pod Security level", lambda e: e.pod_security)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


__all__ = [
    "ACCELERATORS",
    "ENGINES",
    "PREFERENCE",
    "Accelerator",
    "Ask",
    "Capabilities",
    "Efficiency",
    "Engine",
    "EngineMemory",
    "Launch",
    "Lora",
    "Metrics",
    "QuantSupport",
    "Refusal",
    "Speculative",
    "get",
    "support_matrix",
]
