"""Feed `vllm serve` argv and env to vLLM v0.12.0's own parser and config classes.

Runs INSIDE the contract virtualenv that `vllm_env.sh` builds (vllm==0.12.0 from PyPI);
never in the project's .venv. tests/test_engine_contracts.py starts it once for all
cases. Input on stdin: a JSON list of cases

    {"id": str,
     "argv": [...the args after `vllm serve`, model first...],
     "env": {NAME: value},                  # optional: the container's env as the pod has it
     "config_dir_files": {"config.json": {...}, ...},  # optional: replaces the model arg
     "model_dirs": {"<ref>": {"config.json": {...}}},  # optional: other models (a draft
                                                       # model in --speculative-config)
     "device": {"name": str, "capability": "9.0", "count": int, "memory_gib": float}}

and on stdout a JSON list of `{"id", "ok", "stage", "error"}` (`stage` is `done` when the
case got through every stage below, else the stage that refused it).

Stages, in the order `vllm serve` runs them (file references are vllm 0.12.0):

1. `env`: every vLLM environment variable getter (vllm/envs.py `environment_variables`),
   evaluated as `enable_envs_cache()` (envs.py:1570-1586) does after start-up; e.g.
   `VLLM_PORT=tcp://10.0.0.1:8000`, which Kubernetes injects for a Service named `vllm`,
   raises in `get_vllm_port()` (envs.py:407-433).
2. `parse`: the `vllm serve` parser built as vllm/entrypoints/cli/main.py:51-70 builds it
   (FlexibleArgumentParser, the `serve` subparser from entrypoints/cli/serve.py:65-74 =
   `make_arg_parser`, entrypoints/openai/cli_args.py:244-280), then
   `ServeSubcommand.validate` (`validate_parsed_serve_args`, cli_args.py:283-295) and the
   positional model taking precedence (serve.py:48-51).
3. `api_server`: `validate_api_server_args` (entrypoints/openai/api_server.py:1750-1765),
   which `setup_server` runs before it binds the port.
4. `engine_args`: `AsyncEngineArgs.from_cli_args` (engine/arg_utils.py:1156-1164), as
   api_server.py:175 does.
5. `create_engine_config` (arg_utils.py:1335-1751, as api_server.py:209 does), reported
   by the config class that raised: `model_config` (ModelConfig: the HF config.json,
   dtype and quantization checks, config/model.py), `parallel_config`, `cache_config`,
   `speculative_config` (a draft model whose method is detected as `draft_model` raises
   NotImplementedError, config/speculative.py:378-384), `scheduler_config`,
   `lora_config` (config/lora.py), `load_config`, `vllm_config`
   (VllmConfig.__post_init__: the quantization method against the device's compute
   capability, config/vllm.py:357-387, and the platform's `check_and_update_config`), or
   `engine_config` for a check in arg_utils.py itself (e.g. `_check_feature_supported`,
   arg_utils.py:1753-1796, which refuses `"method": "draft_model"` with
   NotImplementedError).

What cannot run here, and why: everything after `create_engine_config` needs the GPU, the
weights or the tokenizer: `AsyncLLM.from_vllm_config` (api_server.py:214-) starts the
engine core, the executor and the workers (CUDA context, NCCL/Ray, weight loading,
KV-cache profiling), the tokenizer and chat template are loaded by the serving layer,
`--lora-modules` are loaded from their paths after start-up, and the socket bind of
`setup_server` is left out. The device itself is simulated: `ContractCudaPlatform` is
vLLM's CUDA platform (vllm/platforms/cuda.py `CudaPlatformBase`) answering its device
queries (compute capability, name, memory, count) from the case's `device` instead of
NVML, so every capability-dependent check above runs for the GPU the pod is planned on.
The vLLM wheel's kernels link the CUDA driver (libcuda.so.1), which a GPU-less machine
does not have; `vllm_env.sh` builds a stub of the few symbols they import (as the CUDA
toolkit's `stubs/libcuda.so` does for build machines), preloaded below. Models are local
directories holding only config.json, so no hub access happens (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import json
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

VLLM_VERSION = "0.12.0"

# Set before vLLM is imported: no hub access, no usage reporting, quiet logs on stderr.
_BASE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    # NOTE: without a driver vLLM logs "Failed to import Triton kernels" at ERROR; a
    # refusal reaches the answer as an exception, so the log adds nothing here.
    "VLLM_LOGGING_LEVEL": "CRITICAL",
    "TOKENIZERS_PARALLELISM": "false",
}
DEFAULT_DEVICE = {"name": "NVIDIA H100 80GB HBM3", "capability": "9.0", "count": 8}

# The config module whose class raised -> the stage reported.
_CONFIG_STAGES = {
    "model": "model_config",
    "parallel": "parallel_config",
    "cache": "cache_config",
    "speculative": "speculative_config",
    "scheduler": "scheduler_config",
    "lora": "lora_config",
    "load": "load_config",
    "vllm": "vllm_config",
    "compilation": "compilation_config",
    "device": "device_config",
    "structured_outputs": "structured_outputs_config",
    "observability": "observability_config",
}


class _ParseError(Exception):
    """The parser exited with an error (argparse prints it and exits 2)."""


def _preload_driver_stub() -> None:
    """Load the libcuda.so.1 stub when no real driver is installed (see the docstring)."""
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
        return
    except OSError:
        pass
    stub = Path(sys.prefix) / "cuda-stub" / "libcuda.so.1"
    if not stub.exists():
        raise SystemExit(f"vllm_check: no libcuda.so.1 and no stub at {stub}; run vllm_env.sh")
    ctypes.CDLL(str(stub), mode=ctypes.RTLD_GLOBAL)


class _Device:
    """The simulated GPU node, changed per case."""

    name = DEFAULT_DEVICE["name"]
    capability = (9, 0)
    count = 8
    memory_bytes = 80 * 2**30


def _install_platform() -> None:
    """Make vLLM's current platform a CUDA platform answering from `_Device`.

    Must run before any vLLM module binds `current_platform` at import time.
    """
    import vllm.platforms as platforms
    from vllm.platforms.cuda import CudaPlatformBase
    from vllm.platforms.interface import DeviceCapability

    if platforms._current_platform is not None:
        raise RuntimeError("vllm_check: the platform was resolved before it was installed")

    class ContractCudaPlatform(CudaPlatformBase):
        """vLLM's CUDA platform with its device queries answered from the case."""

        @classmethod
        def get_device_capability(cls, device_id: int = 0) -> DeviceCapability:
            major, minor = _Device.capability
            return DeviceCapability(major=major, minor=minor)

        @classmethod
        def get_device_name(cls, device_id: int = 0) -> str:
            return _Device.name

        @classmethod
        def get_device_uuid(cls, device_id: int = 0) -> str:
            return f"GPU-contract-{device_id}"

        @classmethod
        def get_device_total_memory(cls, device_id: int = 0) -> int:
            return _Device.memory_bytes

        @classmethod
        def is_fully_connected(cls, device_ids: list[int]) -> bool:
            return True

        @classmethod
        def device_count(cls) -> int:
            return _Device.count

    platforms.current_platform = ContractCudaPlatform()

    # NOTE: ParallelConfig asks torch/NVML for the GPU count through this helper
    # (config/parallel.py:21,561); the simulated node answers instead.
    import vllm.config.parallel as parallel

    parallel.cuda_device_count_stateless = lambda: _Device.count


@contextlib.contextmanager
def _environ(env: dict[str, str], engine_vars: list[str]) -> Iterator[None]:
    """The case's env in place of this process's own values of the engine's variables.

    The variables vLLM reads come from the case alone (a VLLM_PORT in the shell that runs
    the tests must not leak in); the checker's base env stays. Restored afterwards.
    """
    saved = dict(os.environ)
    for name in engine_vars:
        if name not in _BASE_ENV:
            os.environ.pop(name, None)
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _materialise(files: dict[str, Any], root: Path, name: str) -> str:
    directory = root / name
    directory.mkdir(parents=True)
    for filename, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (directory / filename).write_text(text)
    return str(directory)


def _localise(case: dict[str, Any], root: Path) -> list[str]:
    """The argv with the model (and any model named in model_dirs) as local dirs."""
    argv = [str(a) for a in case["argv"]]
    dirs = {
        ref: _materialise(files, root, f"model-{i}")
        for i, (ref, files) in enumerate((case.get("model_dirs") or {}).items())
    }
    if case.get("config_dir_files") and argv and not argv[0].startswith("-"):
        argv[0] = _materialise(case["config_dir_files"], root, "model")
    out: list[str] = []
    for arg in argv:
        if arg in dirs:
            arg = dirs[arg]
        elif arg.startswith("{"):
            # A JSON flag value (--speculative-config) naming another model.
            try:
                value = json.loads(arg)
            except ValueError:
                value = None
            if isinstance(value, dict) and value.get("model") in dirs:
                value["model"] = dirs[value["model"]]
                arg = json.dumps(value)
        out.append(arg)
    return out


def _set_device(device: dict[str, Any] | None) -> None:
    device = {**DEFAULT_DEVICE, **(device or {})}
    major, _, minor = str(device["capability"]).partition(".")
    _Device.name = str(device["name"])
    _Device.capability = (int(major), int(minor or 0))
    _Device.count = int(device["count"])
    _Device.memory_bytes = int(float(device.get("memory_gib", 80)) * 2**30)


def _message(err: BaseException) -> str:
    if isinstance(err, _ParseError):
        return str(err)
    errors = getattr(err, "errors", None)
    if callable(errors) and type(err).__name__ == "ValidationError":
        # pydantic: the first error's message, without the echoed input.
        first = errors()[0]
        return f"{err.title}: {first.get('msg', '')}"  # type: ignore[attr-defined]
    text = str(err) or type(err).__name__
    return f"{type(err).__name__}: {text}"


def _config_stage(err: BaseException) -> str:
    """The config class that raised, read from the traceback (outermost first)."""
    for frame, _ in traceback.walk_tb(err.__traceback__):
        path = Path(frame.f_code.co_filename)
        if path.parent.name == "config" and path.parent.parent.name == "vllm":
            return _CONFIG_STAGES.get(path.stem, f"{path.stem}_config")
    title = getattr(err, "title", None)
    if type(err).__name__ == "ValidationError" and isinstance(title, str):
        # pydantic dataclasses lose the inner frames; the title names the class.
        words = re.findall(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z0-9]+|[A-Z]+", title)
        return "_".join(w.lower() for w in words).replace("lo_ra", "lora")
    return "engine_config"


class _Checker:
    """Imports vLLM once (after the platform is installed) and checks cases."""

    def __init__(self) -> None:
        _preload_driver_stub()
        _install_platform()
        import vllm.envs as envs
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.cli.serve import ServeSubcommand
        from vllm.entrypoints.openai.api_server import validate_api_server_args
        from vllm.usage.usage_lib import UsageContext
        from vllm.utils.argparse_utils import FlexibleArgumentParser

        self.envs = envs
        self.engine_args_cls = AsyncEngineArgs
        self.serve = ServeSubcommand()
        self.validate_api_server_args = validate_api_server_args
        self.usage_context = UsageContext.OPENAI_API_SERVER
        self.parser_cls = FlexibleArgumentParser

    def _parser(self) -> Any:
        # As vllm/entrypoints/cli/main.py:51-70, with the serve subcommand only.
        parser = self.parser_cls(prog="vllm", description="vLLM CLI")
        subparsers = parser.add_subparsers(required=False, dest="subparser")
        self.serve.subparser_init(subparsers).set_defaults(dispatch_function=self.serve.cmd)
        return parser

    def _parse(self, argv: list[str]) -> Any:
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stderr):
                args = self._parser().parse_args(["serve", *argv])
        except SystemExit as exit_:
            lines = [ln for ln in stderr.getvalue().splitlines() if "error:" in ln]
            raise _ParseError(lines[-1] if lines else f"exit {exit_.code}") from None
        self.serve.validate(args)
        if getattr(args, "model_tag", None) is not None:
            args.model = args.model_tag
        return args

    def check(self, case: dict[str, Any]) -> dict[str, Any]:
        """Run one case through every stage; see the module docstring."""
        stage = "env"
        with tempfile.TemporaryDirectory(prefix="vllm-contract-") as tmp:
            try:
                argv = _localise(case, Path(tmp))
                _set_device(case.get("device"))
                env = {str(k): str(v) for k, v in (case.get("env") or {}).items()}
                with _environ(env, list(self.envs.environment_variables)):
                    for getter in self.envs.environment_variables.values():
                        getter()
                    stage = "parse"
                    args = self._parse(argv)
                    stage = "api_server"
                    self.validate_api_server_args(args)
                    stage = "engine_args"
                    engine_args = self.engine_args_cls.from_cli_args(args)
                    stage = "engine_config"
                    try:
                        engine_args.create_engine_config(usage_context=self.usage_context)
                    except Exception as err:
                        stage = _config_stage(err)
                        raise
            except Exception as err:
                return {"id": case["id"], "ok": False, "stage": stage, "error": _message(err)}
        return {"id": case["id"], "ok": True, "stage": "done", "error": None}


def main() -> int:
    """Read the cases from stdin, print the results as JSON on stdout."""
    os.environ.update(_BASE_ENV)
    cases = json.load(sys.stdin)
    # NOTE: vLLM logs to stdout by default; keep stdout for the JSON answer.
    real_stdout = sys.stdout
    sys.stdout = sys.stderr
    try:
        checker = _Checker()
        results = [checker.check(case) for case in cases]
    finally:
        sys.stdout = real_stdout
    json.dump(results, real_stdout, indent=1)
    real_stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
