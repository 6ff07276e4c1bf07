"""`llm-operator run` (and `python -m llm_operator run`): start the Kopf operator.

Reads settings from the environment (`llm_operator.settings`), configures structured
logging and the liveness endpoint, imports the handlers and hands control to Kopf.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The `llm-operator` argument parser."""
    parser = argparse.ArgumentParser(prog="llm-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator against the current kubeconfig/cluster")
    run.add_argument("--namespace", help="watch one namespace (default: all, or env)")
    run.add_argument("--log-format", choices=["plain", "json"], default="json")
    run.add_argument("--verbose", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `llm-operator` console script."""
    args = build_parser().parse_args(argv)
    import kopf  # imported late so `--help` stays fast

    from llm_operator import handlers

    # NOTE: every line about an object names it: a "[namespace/name]" prefix in plain text,
    # an "object" field (kind, namespace, name, uid) in JSON.
    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
        log_prefix=args.log_format != "json",
        log_refkey="object",
    )
    _memory_report_on_signal()
    namespace = args.namespace or handlers.SETTINGS.namespace
    kopf.run(
        clusterwide=not namespace,
        namespaces=[namespace] if namespace else [],
        liveness_endpoint=f"http://0.0.0.0:{handlers.SETTINGS.health_port}/healthz",
        standalone=not handlers.SETTINGS.peering,
        peering_name=handlers.SETTINGS.peering or None,
    )
    return 0


def _memory_report_on_signal(top: int = 40) -> None:
    """With Python's own PYTHONTRACEMALLOC set (a diagnostic run: it slows the process),
    SIGUSR2 prints where the traced memory is, by allocation site, to stderr (the log)."""
    import signal
    import tracemalloc

    if not tracemalloc.is_tracing():
        return

    def owner(traceback: tracemalloc.Traceback) -> str:
        """The most recent frame in the operator, Kopf or a client library: who keeps it."""
        for frame in reversed(traceback):
            if any(p in frame.filename for p in ("llm_operator", "/kopf/", "/kubernetes/")):
                return f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"
        return f"{traceback[-1].filename}:{traceback[-1].lineno}" if traceback else "?"

    def report(_signum: int, _frame: object) -> None:
        stats = tracemalloc.take_snapshot().statistics("traceback")
        total = sum(s.size for s in stats)
        owners: dict[str, list[int]] = {}
        for stat in stats:
            kept = owners.setdefault(owner(stat.traceback), [0, 0])
            kept[0] += stat.size
            kept[1] += stat.count
        lines = [f"tracemalloc: {total / 2**20:.1f} MiB traced; top {top} by the code keeping it:"]
        for where, (size, count) in sorted(owners.items(), key=lambda kv: -kv[1][0])[:top]:
            lines.append(f"tracemalloc: {size / 2**20:8.2f} MiB {count:8d} {where}")
        print("\n".join(lines), file=sys.stderr, flush=True)

    signal.signal(signal.SIGUSR2, report)


if __name__ == "__main__":
    sys.exit(main())
