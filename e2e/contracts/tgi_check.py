"""Check a `text-generation-launcher` argv and env against TGI 3.3.6's own rules.

TGI's launcher is a Rust binary (clap 4.5.32 derive) that no registry reachable here
ships, so this checker reads the launcher's flag table from a data file taken from the
source at the pinned tag (`tgi-3.3.6-launcher.json`: every field of the clap `Args`
struct in launcher/src/main.rs, lines 579-914, and its value enums, lines 405-577) and
reproduces what the launcher does with an argv before it touches a GPU or a model:

* The image's entrypoint first: /tgi-entrypoint.sh runs `exec text-generation-launcher $@`
  (tgi-entrypoint.sh:6 at v3.3.6), unquoted, so bash splits every argument on spaces,
  tabs and newlines and drops empty ones before the launcher sees them (`check(...,
  entrypoint=False)` for a container that replaces the command).
* stage `clap`: what `Args::parse()` (main.rs:2036) refuses. Unknown flags and stray
  positionals, a missing value, a value given to a switch (`--flag=x`), a value that does
  not parse as the field's Rust type (usize/u16/u32/u64/f32/bool) or is not one of its
  value-enum names (case-sensitive), and a non-`Vec` flag given twice. A flag absent from
  argv is read from its clap `env` variable (the pod's env, including the variables
  Kubernetes service links inject), and that value must parse too: `PORT=tcp://...`
  fails exactly as `--port tcp://...` would. A switch's env value must be `true`/`false`.
* stage `launcher`: the launcher's own `ArgumentValidation` errors that need neither a
  GPU nor the model's config.json: `--sharded true` with `--num-shard` <= 1 and
  `--num-shard 0` (main.rs:1388-1406), exl2 with more than one shard (main.rs:2087-2092),
  `--max-input-tokens` together with `--max-input-length` (main.rs:2096-2102),
  `max_input_tokens >= max_total_tokens` (main.rs:2153-2159), `--validation-workers 0`
  (main.rs:2183-2187), `max_total_tokens > max_batch_total_tokens` (main.rs:2195-2204),
  `--ngrok` without its token or edge (main.rs:2206-2218) and a LoRA adapter with more
  than one `@` (main.rs:2240-2255).
* stage `shard`: the LoRA adapter syntax the Python shard parses
  (server/text_generation_server/utils/adapter.py:50-68: `id`, `id@revision` or
  `id=path`, at most one `=` and one `@`).
* stage `router`: `--max-batch-size 0` (backends/v3/src/main.rs:140-146).

What cannot be checked here (it needs the GPU, the weights or the shard's warm-up): the
default `max_batch_prefill_tokens` (main.rs:2110-2150), the router's checks against the
warmed-up batch budget (backends/v3/src/main.rs:177-193) and whether a quantization
kernel exists for the device (e.g. AWQ on ROCm, server/.../layers/gptq/__init__.py:38-43).

Usage: `python tgi_check.py < cases.json`, where cases.json is a list of
`{"id": str, "argv": [...the container args...], "env": {NAME: value}, "entrypoint":
true}`; prints a JSON
list of `{"id", "ok", "stage", "error"}` (`stage` is `done` when every stage passed).
Also importable: `check(argv, env)`.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPEC_PATH = Path(__file__).with_name("tgi-3.3.6-launcher.json")

# Rust's integer FromStr accepts an optional '+' (and '-' for signed types) and ASCII
# digits only; clap parses u16/u32 as i64 and then checks the range, usize/u64 directly.
_UNSIGNED = re.compile(r"\+?[0-9]+")
_SIGNED = re.compile(r"[+-]?[0-9]+")
# Rust's f32 FromStr (core::num::dec2flt): decimal with optional exponent, inf, infinity
# or nan in any case; no '_', no whitespace, no hex.
_FLOAT = re.compile(
    r"[+-]?(?:inf|infinity|nan|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)",
    re.IGNORECASE,
)
_RANGES = {"u16": 2**16 - 1, "u32": 2**32 - 1, "u64": 2**64 - 1, "usize": 2**64 - 1}
# The shard's LoRA adapter syntax (server/text_generation_server/utils/adapter.py:59).
_LORA = re.compile(r"^([^=@]+)(?:=([^@]+))?(?:@(.+))?$")
# bash's default IFS.
_IFS = re.compile(r"[ \t\n]+")


class ContractError(Exception):
    """The launcher would refuse the input; `stage` says which part refuses it."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage


@dataclass(frozen=True)
class Flag:
    """One field of the launcher's clap `Args` struct."""

    long: str
    field: str
    env: str | None
    short: str | None
    takes_value: bool
    type: str
    enum: str | None
    multiple: bool
    value_delimiter: str | None
    line: int


@dataclass
class Spec:
    """The launcher's flags, indexed the ways clap looks them up."""

    flags: list[Flag]
    enums: dict[str, list[str]]
    by_long: dict[str, Flag] = field(default_factory=dict)
    by_short: dict[str, Flag] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for flag in self.flags:
            self.by_long[flag.long] = flag
            # NOTE: `port` and `prometheus_port` both claim -p; clap's release build
            # matches the first declared, so the first one wins here too.
            if flag.short and flag.short not in self.by_short:
                self.by_short[flag.short] = flag


def load_spec(path: Path = SPEC_PATH) -> Spec:
    """Load the launcher flag table (tgi-3.3.6-launcher.json).

    Args:
        path: the data file.

    Returns:
        The flags and value enums.
    """
    raw = json.loads(path.read_text())
    flags = [
        Flag(
            long=f["long"],
            field=f["field"],
            env=f["env"],
            short=f["short"],
            takes_value=f["takes_value"],
            type=f["type"],
            enum=f["enum"],
            multiple=f["multiple"],
            value_delimiter=f["value_delimiter"],
            line=f["line"],
        )
        for f in raw["flags"]
    ]
    enums = {name: e["values"] for name, e in raw["value_enums"].items()}
    return Spec(flags=flags, enums=enums)


def _display(flag: Flag) -> str:
    return f"--{flag.long} <{flag.field.upper()}>" if flag.takes_value else f"--{flag.long}"


def _parse_value(spec: Spec, flag: Flag, raw: str) -> Any:
    """One value as clap's value parser for the field's type would take it."""
    bad = f"invalid value '{raw}' for '{_display(flag)}'"
    kind = flag.type
    if kind == "string":
        return raw
    if kind == "enum":
        allowed = spec.enums[flag.enum or ""]
        if raw not in allowed:
            raise ContractError("clap", f"{bad} [possible values: {', '.join(allowed)}]")
        return raw
    if kind in ("bool", "switch"):
        if raw not in ("true", "false"):
            raise ContractError("clap", f"{bad} [possible values: true, false]")
        return raw == "true"
    if kind == "f32":
        if not _FLOAT.fullmatch(raw):
            raise ContractError("clap", f"{bad}: invalid float literal")
        return float(raw)
    if kind in _RANGES:
        if raw == "":
            raise ContractError("clap", f"{bad}: cannot parse integer from empty string")
        pattern = _SIGNED if kind in ("u16", "u32") else _UNSIGNED
        if not pattern.fullmatch(raw):
            raise ContractError("clap", f"{bad}: invalid digit found in string")
        value = int(raw)
        if not 0 <= value <= _RANGES[kind]:
            raise ContractError("clap", f"{bad}: {value} is not in 0..={_RANGES[kind]}")
        return value
    raise ValueError(f"tgi-3.3.6-launcher.json: unknown type {kind!r} for --{flag.long}")


def _values(spec: Spec, flag: Flag, raw: str) -> list[Any]:
    parts = raw.split(flag.value_delimiter) if flag.value_delimiter else [raw]
    return [_parse_value(spec, flag, part) for part in parts]


def parse_args(spec: Spec, argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """What `Args::parse()` makes of argv and env, or ContractError(stage="clap").

    Args:
        spec: the launcher's flags.
        argv: the arguments after the binary's name.
        env: the process environment (values only; unknown values left out).

    Returns:
        field name -> parsed value (a list for `Vec` fields), for the flags that were
        given on the command line or through their env variable.
    """
    given: dict[str, Any] = {}

    def store(flag: Flag, raw: str | None) -> None:
        if flag.field in given and not flag.multiple:
            raise ContractError(
                "clap", f"the argument '{_display(flag)}' cannot be used multiple times"
            )
        if not flag.takes_value:
            given[flag.field] = True
        elif flag.multiple:
            given.setdefault(flag.field, []).extend(_values(spec, flag, raw or ""))
        else:
            given[flag.field] = _values(spec, flag, raw or "")[0]

    def is_value(token: str) -> bool:
        # clap takes the next token as the value unless it looks like a flag ('-' alone
        # is a value).
        return token == "-" or not token.startswith("-")

    i = 0
    while i < len(argv):
        token = argv[i]
        i += 1
        if token == "--":
            # Everything after `--` is positional, and the launcher takes none.
            if i < len(argv):
                raise ContractError("clap", f"unexpected argument '{argv[i]}' found")
            break
        if token == "-" or not token.startswith("-"):
            raise ContractError("clap", f"unexpected argument '{token}' found")
        if token.startswith("--"):
            name, eq, inline = token[2:].partition("=")
            if name in ("help", "version"):
                raise ContractError("clap", f"--{name} prints and exits without serving")
            flag = spec.by_long.get(name)
            if flag is None:
                raise ContractError("clap", f"unexpected argument '--{name}' found")
            if not flag.takes_value:
                if eq:
                    raise ContractError(
                        "clap",
                        f"unexpected value '{inline}' for '{_display(flag)}' found; "
                        "no more were expected",
                    )
                store(flag, None)
            elif eq:
                store(flag, inline)
            elif i < len(argv) and is_value(argv[i]):
                store(flag, argv[i])
                i += 1
            else:
                raise ContractError(
                    "clap", f"a value is required for '{_display(flag)}' but none was supplied"
                )
            continue
        # A cluster of short flags: -e, -p 80, -p80, -p=80, -ep 80.
        rest = token[1:]
        while rest:
            letter, rest = rest[0], rest[1:]
            if letter in ("h", "V"):
                raise ContractError("clap", f"-{letter} prints and exits without serving")
            flag = spec.by_short.get(letter)
            if flag is None:
                raise ContractError("clap", f"unexpected argument '-{letter}' found")
            if not flag.takes_value:
                store(flag, None)
                continue
            if rest:
                store(flag, rest[1:] if rest.startswith("=") else rest)
            elif i < len(argv) and is_value(argv[i]):
                store(flag, argv[i])
                i += 1
            else:
                raise ContractError(
                    "clap", f"a value is required for '{_display(flag)}' but none was supplied"
                )
            rest = ""

    for flag in spec.flags:
        if flag.field in given or flag.env is None or flag.env not in env:
            continue
        raw = env[flag.env]
        if raw == "" and not flag.takes_value:
            raise ContractError(
                "clap", f"a value is required for '{_display(flag)}' but none was supplied"
            )
        try:
            parsed = _values(spec, flag, raw)
        except ContractError as err:
            raise ContractError("clap", f"{err} (from env {flag.env}={raw!r})") from None
        given[flag.field] = parsed if flag.multiple else parsed[0]
    return given


def validate_launcher(args: dict[str, Any]) -> None:
    """The launcher's, shard's and router's argument checks that need no GPU or config.

    Args:
        args: `parse_args()`'s result.

    Raises:
        ContractError: with stage `launcher`, `shard` or `router`.
    """
    sharded, num_shard = args.get("sharded"), args.get("num_shard")
    if sharded is True and num_shard is not None and num_shard <= 1:
        raise ContractError("launcher", "Invalid argument: `sharded` is true but `num_shard` <= 1")
    if num_shard is not None and num_shard < 1:
        raise ContractError("launcher", "Invalid argument: `num_shard` cannot be < 1")
    if (num_shard or 1) > 1 and args.get("quantize") == "exl2":
        raise ContractError(
            "launcher",
            "Invalid argument: Sharding is currently not supported with `exl2` quantization",
        )
    max_input, legacy = args.get("max_input_tokens"), args.get("max_input_length")
    if max_input is not None and legacy is not None:
        raise ContractError(
            "launcher",
            f"Invalid argument: Both `max_input_tokens` ({max_input}) and `max_input_length` "
            f"({legacy}) are set.",
        )
    max_input = max_input if max_input is not None else legacy
    max_total = args.get("max_total_tokens")
    if max_input is not None and max_total is not None and max_input >= max_total:
        raise ContractError(
            "launcher",
            f"Invalid argument: `max_input_tokens`({max_input}) must be < "
            f"`max_total_tokens`({max_total})",
        )
    if args.get("validation_workers") == 0:
        raise ContractError("launcher", "Invalid argument: `validation_workers` must be > 0")
    batch_total = args.get("max_batch_total_tokens")
    if batch_total is not None and max_total is not None and max_total > batch_total:
        raise ContractError(
            "launcher",
            "Invalid argument: `max_total_tokens` must be <= `max_batch_total_tokens`. "
            f"Given: {max_total} and {batch_total}",
        )
    if args.get("ngrok"):
        for needed in ("ngrok_authtoken", "ngrok_edge"):
            if args.get(needed) is None:
                raise ContractError(
                    "launcher",
                    f"Invalid argument: `{needed.replace('_', '-')}` must be set when using "
                    "ngrok tunneling",
                )
    adapters = args.get("lora_adapters")
    if adapters is not None:
        for adapter in adapters.split(","):
            if "=" not in adapter and adapter.strip().count("@") > 1:
                raise ContractError(
                    "launcher", f"Invalid argument: Invalid LoRA adapter format: {adapter.strip()}"
                )
        for adapter in adapters.split(","):
            adapter = adapter.strip()
            if adapter.count("=") > 1 or adapter.count("@") > 1 or not _LORA.match(adapter):
                raise ContractError("shard", f"Invalid LoRA adapter format: {adapter}")
    if args.get("max_batch_size") == 0:
        raise ContractError("router", "Invalid argument: `max_batch_size` must be > 0")


def entrypoint_words(args: list[str]) -> list[str]:
    """The argv the launcher gets from `exec text-generation-launcher $@` (unquoted)."""
    return [word for arg in args for word in _IFS.split(arg) if word]


def check(
    argv: list[str],
    env: dict[str, str] | None = None,
    spec: Spec | None = None,
    *,
    entrypoint: bool = True,
) -> dict[str, Any]:
    """Run every stage on one launcher invocation.

    Args:
        argv: the container's args.
        env: the container's environment, as name -> value.
        spec: the flag table; loaded from SPEC_PATH when None.
        entrypoint: the args go through the image's entrypoint script (the container
            does not set `command`).

    Returns:
        `{"ok": bool, "stage": str, "error": str | None}`; stage is `done` when it passes.
    """
    spec = spec or load_spec()
    words = entrypoint_words(list(argv)) if entrypoint else list(argv)
    try:
        args = parse_args(spec, words, dict(env or {}))
        validate_launcher(args)
    except ContractError as err:
        message = str(err)
        if words != list(argv):
            message += " (after the image's entrypoint split the args: tgi-entrypoint.sh:6)"
        return {"ok": False, "stage": err.stage, "error": message}
    return {"ok": True, "stage": "done", "error": None}


def main() -> int:
    """Read a JSON list of cases from stdin and print a JSON list of results."""
    spec = load_spec()
    cases = json.load(sys.stdin)
    results = [
        {
            "id": case["id"],
            **check(
                case["argv"],
                case.get("env") or {},
                spec,
                entrypoint=case.get("entrypoint", True),
            ),
        }
        for case in cases
    ]
    json.dump(results, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
