"""`llmctl`: the offline CLI for people and CI (plan, estimate, render, resolve, crd, catalog),
and `calibrate`, which reads a running fleet.

No cluster needed, except for `calibrate` (a kubeconfig and Prometheus). `--model` takes a
catalog name (no network), a Hugging Face id (its config.json, read through
`llm_operator.hub`), a local directory holding config.json or a local .gguf file;
`--model-config FILE` names the config.json (or .gguf) explicitly. Exit codes: 0 success,
1 no feasible plan (calibrate: nothing measured), 2 bad input (the message names the field
and the closest valid names).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config import ConfigException
from pydantic import ValidationError

from llm_operator import engines, kube
from llm_operator.api import crd as crd_gen
from llm_operator.api.v1alpha1 import (
    ENGINES,
    GROUP,
    PLURAL,
    QUANTIZATIONS,
    VERSION,
    LLMDeployment,
    LLMDeploymentSpec,
)
from llm_operator.autoscaler import fleet, metrics
from llm_operator.catalog import (
    GIB,
    Catalog,
    CatalogError,
    UnknownNameError,
    load_catalog,
    parse_calibrations,
)
from llm_operator.catalog.resolve import ConfigError, ResolvedModel
from llm_operator.engines import Ask
from llm_operator.planner import memory
from llm_operator.planner.levers import Lever, levers
from llm_operator.planner.search import (
    Candidate,
    PlanInputError,
    PlanResult,
    Rejection,
    Request,
    evaluate,
    plan,
)
from llm_operator.render import RenderError, render_for, to_yaml


class UsageError(Exception):
    """Bad input from the command line or a file; exit code 2."""


def _closest(value: str, valid: Sequence[str]) -> str:
    near = difflib.get_close_matches(value.lower(), valid, n=3, cutoff=0.3) or list(valid)
    return ", ".join(near)


def _check_choice(flag: str, value: str, valid: Sequence[str]) -> str:
    if value.lower() not in valid:
        raise UsageError(f"{flag}: unknown value {value!r}; closest: {_closest(value, valid)}")
    return value.lower()


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """One line per problem, each starting with the field path as written in YAML."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        lines.append(f"{path or '<root>'}: {e['msg']}")
    return "\n".join(lines)


def load_llmdeployment(path: Path) -> LLMDeployment:
    """Read and validate an LLMDeployment YAML file.

    Raises:
        UsageError: unreadable file, not an LLMDeployment, or invalid fields (named).
    """
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as err:
        raise UsageError(f"-f {path}: {err.strerror}") from err
    except yaml.YAMLError as err:
        raise UsageError(f"-f {path}: not valid YAML: {err}") from err
    if not isinstance(doc, dict) or doc.get("kind") != "LLMDeployment":
        raise UsageError(f"-f {path}: expected one document of kind LLMDeployment")
    try:
        return LLMDeployment.model_validate(doc)
    except ValidationError as err:
        raise UsageError(f"{path}:\n{format_validation_error(err)}") from err


def _catalog(args: argparse.Namespace) -> Catalog:
    try:
        catalog = load_catalog(args.model_catalog, args.gpu_catalog)
        path = getattr(args, "calibration", None)
        if path is None:
            return catalog
        try:
            text = Path(path).read_text()
        except OSError as err:
            raise CatalogError(str(path), f"cannot be read ({err.strerror})") from err
        return replace(catalog, calibrations=parse_calibrations(text, str(path)))
    except CatalogError as err:
        raise UsageError(str(err)) from err


def resolve_model(
    catalog: Catalog,
    model: str | None,
    model_config: Path | None = None,
    revision: str | None = None,
    flag: str = "--model",
) -> ResolvedModel | None:
    """The shape of a model the catalog does not give: `--model-config FILE`, else `model`
    as a local directory with config.json, a local .gguf file or a Hugging Face id.

    Returns:
        None for a catalog model (answered offline), else what the model's files say.

    Raises:
        UsageError: naming the flag, the closest catalog names and the Hub's answer.
    """
    # NOTE: imported here: huggingface_hub is most of `llmctl`'s start-up, and a catalog
    # model needs none of it.
    from llm_operator import hub

    if model_config is not None:
        if not model_config.exists():
            raise UsageError(f"--model-config {model_config}: no such file")
        try:
            return hub.resolve(str(model_config))
        except (ConfigError, hub.HubError) as err:
            raise UsageError(f"--model-config {model_config}: {err}") from err
    if model is None:
        return None
    try:
        catalog.model(model)
        return None
    except UnknownNameError as err:
        unknown = err
    try:
        return hub.resolve(model, revision=revision)
    except hub.HubError as err:
        raise UsageError(f"{flag}: {unknown}; from the Hugging Face Hub: {err}") from err
    except ConfigError as err:
        raise UsageError(f"{flag} {model}: {err}") from err


def _gguf_quantization(resolved: ResolvedModel | None, asked: str, flag: str) -> str:
    """The quantization to plan: a GGUF file's own type (asked must be auto or equal)."""
    if resolved is None or resolved.quantization is None:
        return asked
    if asked not in ("auto", resolved.quantization):
        raise UsageError(
            f"{flag}: {resolved.origin} stores its weights as {resolved.quantization}, not "
            f"{asked}; leave it auto or say {resolved.quantization}"
        )
    return resolved.quantization


def _spec_from_flags(
    args: argparse.Namespace, resolved: ResolvedModel | None = None
) -> LLMDeploymentSpec:
    if not args.model and args.model_config is None:
        raise UsageError("plan: give -f FILE, --model NAME or --model-config FILE")
    _check_choice("--quantization", args.quantization, QUANTIZATIONS)
    _check_choice("--engine", args.engine, ENGINES)
    name = args.model or str(args.model_config)
    model: dict[str, Any] = {"name": name}
    quantization = _gguf_quantization(resolved, args.quantization.lower(), "--quantization")
    if resolved is not None and resolved.quantization is not None:
        # A local GGUF file is served as a file (llama.cpp --model-url), not from the Hub.
        path = Path(args.model_config or args.model).expanduser().resolve()
        model.update(source="url", uri=path.as_uri())
    raw: dict[str, Any] = {
        "model": model,
        "quantization": quantization,
        "engine": args.engine.lower(),
        "context": {"maxModelLen": args.context if args.context is not None else "auto"},
        "workload": {"inputTokens": args.input_tokens, "outputTokens": args.output_tokens},
        "hardware": {"gpuTypes": args.gpu or [], "allowCpu": args.allow_cpu},
    }
    if args.concurrency is not None:
        raw["workload"]["concurrency"] = args.concurrency
    if args.budget_per_hour is not None:
        raw["budget"] = {"maxCostPerHour": args.budget_per_hour}
    try:
        return LLMDeploymentSpec.model_validate(raw)
    except ValidationError as err:
        raise UsageError(format_validation_error(err, "spec")) from err


def _row(c: Candidate) -> dict[str, Any]:
    return c.to_status().model_dump(by_alias=True)


def plan_json(result: PlanResult, found: Sequence[Lever] = ()) -> dict[str, Any]:
    """The `--output json` object: plan fields, replicas, alternatives, rejected, and what
    each cost lever buys."""
    body: dict[str, Any] = _row(result.chosen) if result.chosen else {"feasible": False}
    body["replicas"] = result.replicas
    body["alternatives"] = [_row(c) for c in result.alternatives]
    body["rejected"] = [{"candidate": r.label, "reason": r.reason} for r in result.rejected]
    body["levers"] = [
        {
            "lever": lever.name,
            "setting": lever.setting,
            "costPerMillionWith": lever.with_cost,
            "costPerMillionWithout": lever.without_cost,
            **({"note": lever.note} if lever.note else {}),
        }
        for lever in found
    ]
    return body


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def levers_text(found: Sequence[Lever]) -> str:
    """The "what each lever buys" table: $/1M output tokens with and without each lever."""
    rows = [["LEVER", "SETTING", "WITHOUT $/1M", "WITH $/1M", "SAVES"]]
    for lever in found:
        saving = lever.saving
        if lever.note is not None:
            saves = lever.note
        elif lever.without_cost is None:
            saves = "nothing feasible without it"
        else:
            saves = f"{saving:.0%}" if saving is not None else "-"
        rows.append(
            [lever.name, lever.setting, _money(lever.without_cost), _money(lever.with_cost), saves]
        )
    return "what each lever buys (this workload, $ per 1M output tokens):\n" + _table(rows)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def plan_text(model: str, result: PlanResult, found: Sequence[Lever] = ()) -> str:
    """A readable summary: the choice, why, the alternatives, what each cost lever buys and
    the closest rejections."""
    out: list[str] = []
    header = ["", "GPU", "GPUS", "TP", "PP", "ENGINE", "QUANT", "CTX", "SEQS", "TTFT ms",
              "TPOT ms", "TOK/S", "$/HR", "$/1M TOK"]  # fmt: skip
    rows = [header]
    for mark, c in [("*", result.chosen)] + [(" ", a) for a in result.alternatives]:
        if c is None:
            continue
        rows.append(
            [
                mark,
                c.gpu.name,
                str(c.gpus),
                str(c.tensor_parallel),
                str(c.pipeline_parallel),
                c.engine.name,
                c.quantization,
                str(c.max_model_len),
                str(c.max_sequences),
                f"{c.timing.ttft_ms:.0f}",
                f"{c.timing.tpot_ms:.1f}",
                f"{c.timing.output_tokens_per_second:.0f}",
                f"{c.cost_per_hour:.2f}",
                f"{c.cost_per_million:.3f}",
            ]
        )
    if result.chosen is None:
        out.append(f"{model}: no feasible plan")
    else:
        c = result.chosen
        out.append(f"{model}: {c.label}, {result.replicas} replica(s)")
        out.append(
            f"  weights {c.fit.weights_bytes / GIB:.1f} GiB/GPU, KV cache "
            f"{c.fit.kv_bytes / GIB:.1f} GiB/GPU = {c.fit.max_kv_tokens} tokens: room for "
            f"{c.max_sequences} sequences at the workload's lengths; planned batch {c.batch}"
            + (" (the most that meets the SLOs)" if c.batch < c.max_sequences else "")
        )
        if result.alternatives:
            nxt = result.alternatives[0]
            extra = (nxt.cost_per_million / c.cost_per_million - 1) * 100
            out.append(
                f"  why: cheapest $/1M output tokens that fits memory, SLOs and budget; "
                f"next best {nxt.label} costs {extra:+.0f}% per token"
            )
        out.append("")
        out.append(_table(rows))
        if found:
            out.append("")
            out.append(levers_text(found))
    if result.rejected:
        out.append("")
        out.append("rejected (closest first):")
        out.extend(f"  {r.label}: {r.reason}" for r in result.rejected)
    return "\n".join(out)


def _resolve_spec_model(catalog: Catalog, spec: LLMDeploymentSpec) -> ResolvedModel | None:
    """For an LLMDeployment file: the model's shape when neither the spec nor the catalog
    gives it (the Hub's config.json at spec.model.revision)."""
    if spec.model.architecture is not None:
        return None
    return resolve_model(
        catalog, spec.model.name, revision=spec.model.revision, flag="spec.model.name"
    )


def cmd_plan(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    if args.file:
        spec = load_llmdeployment(Path(args.file)).spec
        resolved = _resolve_spec_model(catalog, spec)
    else:
        resolved = resolve_model(catalog, args.model, args.model_config)
        spec = _spec_from_flags(args, resolved)
    try:
        result = plan(spec, catalog, resolved=resolved.architecture if resolved else None)
    except PlanInputError as err:
        raise UsageError(str(err)) from err
    found = levers(spec, catalog, resolved=resolved.architecture if resolved else None)
    if args.output == "json":
        print(json.dumps(plan_json(result, found), indent=2))
    else:
        print(plan_text(spec.model.name, result, found))
    return 0 if result.chosen else 1


ESTIMATE_KEYS = (
    "fits",
    "weightsGiBPerGpu",
    "kvCacheBytesPerToken",
    "kvCacheGiBPerGpu",
    "maxKvTokens",
    "maxConcurrentSequences",
    "ttftMs",
    "tpotMs",
    "outputTokensPerSecond",
    "costPerHour",
    "costPerMillionOutputTokens",
)


def estimate_json(
    catalog: Catalog,
    model: str,
    quantization: str,
    gpu_name: str,
    gpus: int,
    tensor_parallel: int,
    pipeline_parallel: int,
    engine: str,
    request: Request,
    resolved: ResolvedModel | None = None,
) -> dict[str, Any]:
    """Evaluate one explicit layout; the keys are the CLI contract (`ESTIMATE_KEYS`).

    Args:
        resolved: the model's shape read from its own files (`resolve_model`), for a model
            the catalog does not know; None looks `model` up in the catalog.

    Raises:
        UsageError: unknown names or inconsistent GPU counts.
    """
    try:
        if resolved is None:
            entry = catalog.model(model)
            arch, gguf_repo, source = entry.architecture, entry.gguf is not None, "hf"
        else:
            arch, gguf_repo = resolved.architecture, False
            # A local GGUF file is served as a file, not from a Hub repository.
            source = "url" if resolved.quantization is not None else "hf"
        gpu = catalog.gpu(gpu_name)
    except UnknownNameError as err:
        flag = "--model" if err.kind == "model" else "--gpu"
        raise UsageError(f"{flag}: {err}") from err
    quantization = _gguf_quantization(resolved, quantization, "--quantization")
    if tensor_parallel * pipeline_parallel != gpus:
        raise UsageError(
            f"--gpus {gpus} must equal --tensor-parallel {tensor_parallel} x "
            f"--pipeline-parallel {pipeline_parallel}"
        )
    profile = engines.get(engine)
    request = replace(
        request,
        ask=replace(
            request.ask,
            checkpoint=arch.checkpoint_quantization,
            model_type=arch.model_type,
            gguf_repo=gguf_repo,
            model_source=source,
        ),
    )
    out = evaluate(arch, gpu, profile, quantization, tensor_parallel, pipeline_parallel, request)
    kv_dtype = profile.kv_cache_element_bytes(quantization, request.fp8_kv_cache, gpu.accelerator)
    body: dict[str, Any] = dict.fromkeys(ESTIMATE_KEYS)
    body["kvCacheBytesPerToken"] = memory.kv_bytes_per_token(arch, kv_dtype)
    body["weightsGiBPerGpu"] = round(memory.weight_bytes(arch, quantization) / gpus / GIB, 3)
    if isinstance(out, Rejection):
        body.update(fits=False, reason=out.reason)
        return body
    status = out.to_status()
    body.update(
        fits=True,
        weightsGiBPerGpu=round(out.fit.weights_bytes / GIB, 3),
        kvCacheGiBPerGpu=round(out.fit.kv_bytes / GIB, 3),
        maxKvTokens=out.fit.max_kv_tokens,
        maxConcurrentSequences=out.max_sequences,
        ttftMs=status.ttft_ms,
        tpotMs=status.tpot_ms,
        outputTokensPerSecond=status.output_tokens_per_second,
        costPerHour=status.cost_per_hour,
        costPerMillionOutputTokens=status.cost_per_million_output_tokens,
    )
    return body


def cmd_estimate(args: argparse.Namespace) -> int:
    quant = _check_choice("--quantization", args.quantization, QUANTIZATIONS[1:])
    engine = _check_choice("--engine", args.engine, ENGINES[1:])
    request = Request(
        input_tokens=args.input_tokens,
        output_tokens=args.output_tokens,
        concurrency=args.concurrency,
        max_model_len=args.max_model_len,
        gpu_memory_utilization=args.gpu_memory_utilization,
        fp8_kv_cache=args.fp8_kv_cache,
        ask=Ask(quantization=quant, fp8_kv_cache=args.fp8_kv_cache),
    )
    if not args.model and args.model_config is None:
        raise UsageError("estimate: give --model NAME or --model-config FILE")
    catalog = _catalog(args)
    resolved = resolve_model(catalog, args.model, args.model_config)
    body = estimate_json(
        catalog,
        args.model or str(args.model_config),
        quant,
        args.gpu,
        args.gpus,
        args.tensor_parallel,
        args.pipeline_parallel,
        engine,
        request,
        resolved,
    )
    if args.output == "json":
        print(json.dumps(body, indent=2))
    else:
        print("\n".join(f"{k}: {v}" for k, v in body.items()))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    """Plan and render the Kubernetes objects of an LLMDeployment file (the GitOps path)."""
    llmd = load_llmdeployment(Path(args.file))
    catalog = _catalog(args)
    resolved = _resolve_spec_model(catalog, llmd.spec)
    try:
        objects = render_for(
            llmd,
            catalog,
            resolved=resolved.architecture if resolved else None,
            monitoring=args.monitoring,
        )
    except (RenderError, PlanInputError) as err:
        raise UsageError(str(err)) from err
    sys.stdout.write(to_yaml(objects))
    return 0


def cmd_crd(args: argparse.Namespace) -> int:
    sys.stdout.write(crd_gen.crd_yaml())
    return 0


def cmd_catalog(args: argparse.Namespace) -> int:
    catalog = _catalog(args)
    if args.what == "models":
        rows = [["MODEL", "PARAMS", "LAYERS", "KV HEADS", "MAX CONTEXT", "ALIASES"]]
        for m in catalog.models:
            a = m.architecture
            rows.append(
                [
                    m.name,
                    f"{memory.total_params(a) / 1e9:.1f}B",
                    str(a.layers),
                    str(a.kv_heads_or_default),
                    str(a.max_context),
                    ", ".join(m.aliases),
                ]
            )
    else:
        rows = [["GPU", "MEMORY GiB", "GB/s", "FP16 TFLOPS", "PER NODE", "$/HR", "ALIASES"]]
        for g in catalog.gpus:
            rows.append(
                [
                    g.name,
                    f"{g.memory_gib:g}",
                    f"{g.memory_bandwidth_gbps:g}",
                    f"{g.fp16_tflops:g}",
                    str(g.gpus_per_node),
                    f"{g.price_per_hour:.2f}",
                    ", ".join(g.aliases),
                ]
            )
    print(_table(rows))
    return 0


def _add_catalog_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-catalog", type=Path, help="models YAML replacing the built-in one")
    p.add_argument("--gpu-catalog", type=Path, help="GPU YAML replacing the built-in one")
    p.add_argument(
        "--calibration",
        type=Path,
        metavar="FILE",
        help="fleet calibration (what `llmctl calibrate` writes) the predictions include",
    )


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help="catalog name (offline), Hugging Face id (reads its config.json from the Hub or "
        "the cache), local directory with config.json, or local .gguf file",
    )
    p.add_argument(
        "--model-config",
        type=Path,
        metavar="FILE",
        help="the model's config.json (or .gguf) file; --model is then only its name",
    )


def cmd_resolve(args: argparse.Namespace) -> int:
    """Print what spec.model.architecture (and, for GGUF, spec.quantization) would say."""
    catalog = _catalog(args)
    resolved = resolve_model(catalog, args.model, revision=args.revision)
    if resolved is None:
        arch, origin, quantization = catalog.model(args.model).architecture, "catalog", None
    else:
        arch, origin, quantization = (
            resolved.architecture,
            resolved.origin,
            resolved.quantization,
        )
    doc: dict[str, Any] = {
        "model": {"architecture": arch.model_dump(by_alias=True, exclude_none=True)}
    }
    if quantization is not None:
        doc["quantization"] = quantization
    sys.stdout.write(f"# {args.model}: from {origin}\n")
    sys.stdout.write(yaml.safe_dump(doc, sort_keys=False))
    return 0


def cmd_engines(args: argparse.Namespace) -> int:
    """The capability matrix of the pinned engine versions (docs/engines.md embeds it)."""
    del args
    print(engines.support_matrix(), end="")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit the fleet calibration from what the running deployments' engines measured.

    Reads the LLMDeployments (their plans and load curves) through the kubeconfig and the
    engines' own metrics from Prometheus over `--window`, compares them at the measured
    load (`autoscaler.fidelity`) and writes the calibration YAML (for the operator's
    calibration ConfigMap and `llmctl --calibration`).
    """
    catalog = _catalog(args)
    try:
        kube.load_config(args.kubeconfig)
        api = client.CustomObjectsApi()
        if args.namespace:
            found = api.list_namespaced_custom_object(GROUP, VERSION, args.namespace, PLURAL)
        else:
            found = api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
    except (ConfigException, ApiException, OSError, urllib3.exceptions.HTTPError) as err:
        raise UsageError(f"--kubeconfig: cannot list LLMDeployments ({err})") from err
    items: list[dict[str, Any]] = found.get("items", []) if isinstance(found, dict) else []
    prometheus = metrics.make_client(args.prometheus, args.timeout)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        fit = fleet.calibrate(
            prometheus, items, catalog, window=args.window, timeout_s=args.timeout, fitted=stamp
        )
    except metrics.MetricsError as err:
        raise UsageError(f"--prometheus: {err}") from err
    for line in fit.lines or ["no deployment measured anything: nothing fitted"]:
        print(line, file=sys.stderr)
    text = fit.to_yaml(
        f"# Fleet calibration: `llmctl calibrate --prometheus {args.prometheus} --window "
        f"{args.window}` at {stamp}\n# from {fit.samples} deployments; load it with "
        "`llmctl --calibration FILE` or the operator's calibration ConfigMap.\n"
    )
    if args.output_file:
        Path(args.output_file).write_text(text)
    else:
        print(text, end="")
    return 0 if fit.samples else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `llmctl` (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(prog="llmctl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="choose hardware, engine and context for a model")
    p.add_argument("-f", "--file", help="an LLMDeployment YAML file")
    _add_model_flags(p)
    p.add_argument("--quantization", default="auto")
    p.add_argument("--engine", default="auto")
    p.add_argument("--context", type=int, help="maxModelLen (default auto)")
    p.add_argument("--input-tokens", type=int, default=1024)
    p.add_argument("--output-tokens", type=int, default=256)
    p.add_argument("--concurrency", type=int)
    p.add_argument("--gpu", action="append", help="allowed GPU type (repeatable)")
    p.add_argument("--allow-cpu", action="store_true")
    p.add_argument("--budget-per-hour", type=float)
    p.add_argument("--output", choices=["table", "json"], default="table")
    _add_catalog_flags(p)
    p.set_defaults(func=cmd_plan)

    e = sub.add_parser("estimate", help="predict memory, speed and cost of one explicit layout")
    _add_model_flags(e)
    e.add_argument("--quantization", required=True)
    e.add_argument("--gpu", required=True)
    e.add_argument("--gpus", type=int, required=True)
    e.add_argument("--tensor-parallel", type=int, required=True)
    e.add_argument("--pipeline-parallel", type=int, default=1)
    e.add_argument("--engine", required=True)
    e.add_argument("--input-tokens", type=int, required=True)
    e.add_argument("--output-tokens", type=int, required=True)
    e.add_argument("--concurrency", type=int, required=True)
    e.add_argument("--max-model-len", type=int)
    e.add_argument("--gpu-memory-utilization", type=float)
    e.add_argument("--fp8-kv-cache", action="store_true")
    e.add_argument("--output", choices=["text", "json"], default="text")
    _add_catalog_flags(e)
    e.set_defaults(func=cmd_estimate)

    r = sub.add_parser("render", help="print the workload objects (kubectl apply -f -)")
    r.add_argument("-f", "--file", required=True, help="an LLMDeployment YAML file")
    r.add_argument("--monitoring", action="store_true", help="also render a PodMonitor")
    _add_catalog_flags(r)
    r.set_defaults(func=cmd_render)

    v = sub.add_parser(
        "resolve", help="print a model's architecture as read from its config.json or GGUF file"
    )
    v.add_argument("model", help="catalog name, Hugging Face id, directory or .gguf file")
    v.add_argument("--revision", help="Hugging Face branch, tag or commit")
    _add_catalog_flags(v)
    v.set_defaults(func=cmd_resolve)

    c = sub.add_parser("crd", help="print the generated CustomResourceDefinition")
    c.set_defaults(func=cmd_crd)

    m = sub.add_parser("engines", help="print what each engine supports (Markdown table)")
    m.set_defaults(func=cmd_engines)

    f = sub.add_parser(
        "calibrate",
        help="fit the fleet calibration from what the running deployments measured "
        "(Prometheus) and write it as YAML",
    )
    f.add_argument("--prometheus", required=True, help="Prometheus URL, e.g. http://prom:9090")
    f.add_argument("--window", default="1h", help="PromQL duration to average over (1h)")
    f.add_argument("--kubeconfig", help="kubeconfig (default: KUBECONFIG, ~/.kube/config)")
    f.add_argument("-n", "--namespace", help="only this namespace's LLMDeployments")
    f.add_argument("--timeout", type=float, default=30.0, help="seconds per query")
    f.add_argument("-o", "--output-file", help="write here instead of stdout")
    _add_catalog_flags(f)
    f.set_defaults(func=cmd_calibrate)

    k = sub.add_parser("catalog", help="list catalog models or GPUs")
    k.add_argument("what", choices=["models", "gpus"])
    _add_catalog_flags(k)
    k.set_defaults(func=cmd_catalog)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `llmctl` console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except UsageError as err:
        print(f"llmctl: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # NOTE: the reader went away (`llmctl plan ... | head`): not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command killed by the pipe
    return code


if __name__ == "__main__":
    sys.exit(main())
