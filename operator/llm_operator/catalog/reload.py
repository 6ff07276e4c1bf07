"""Custom catalog files re-read when they change, keeping the last good catalog.

The chart mounts the GPU catalog ConfigMap as a file. Kubelet updates such a file in
place: it writes the new content into a fresh directory and swaps the volume's `..data`
symlink to it (one atomic rename), so the configured path stays and its content changes,
usually within a minute of the ConfigMap edit. `CatalogFiles.refresh()` re-reads each
custom file at most every `interval_s` seconds (a read and a SHA-256 of a few KiB; no
stat of symlink targets, so the swap needs no special case) and parses only content it
has not seen before:

* valid: it replaces its part of the catalog (models, GPUs and the fleet calibration are
  separate files, kept and replaced separately);
* invalid (bad YAML, a field the schema refuses such as a GPU with negative memory, an
  empty file, a file that vanished): the last good part stays in use, and the caller gets
  one `Change` naming the file and each bad field, once per change to bad content (the
  same bytes checked again are not reported again).

At construction there is no last good catalog, so a bad file raises `CatalogError`
(`handlers.configure` says why the operator then refuses to start). Built-in catalogs
never change and are never re-read.

Pure: no logging, no metrics, no Kubernetes. `handlers.py` calls `refresh()` at the
start of each reconcile pass and reports every `Change` (log line, metrics, event).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from llm_operator.catalog import (
    Calibration,
    Catalog,
    CatalogError,
    GpuType,
    ModelEntry,
    load_catalog,
    parse_calibrations,
    parse_gpus,
    parse_models,
)

CatalogKind = Literal["gpu", "model", "calibration"]
_FILES: dict[CatalogKind, tuple[str, str]] = {
    # kind -> (built-in file, the `llmctl` flag that checks a file)
    "gpu": ("gpus.yaml", "--gpu-catalog"),
    "model": ("models.yaml", "--model-catalog"),
    "calibration": ("calibration.yaml", "--calibration"),
}
_LABELS: dict[CatalogKind, str] = {
    "gpu": "GPU catalog",
    "model": "model catalog",
    "calibration": "fleet calibration",
}


@dataclass(frozen=True)
class Change:
    """New content found in one catalog file by `CatalogFiles.refresh()`.

    Attributes:
        catalog: which catalog, "gpu" or "model".
        path: the file as configured (the mount path, not the `..data` target).
        digest: first 12 hex digits of the content's SHA-256; "" when unreadable.
        kept: digest of the content in use after this change (the new one when valid,
            else the last good one).
        entries: how many GPUs or models the catalog in use has.
        error: why the content was refused; None when it replaced the catalog.
    """

    catalog: CatalogKind
    path: Path
    digest: str
    kept: str
    entries: int
    error: CatalogError | None = None

    @property
    def ok(self) -> bool:
        """Whether the new content replaced the catalog."""
        return self.error is None

    def message(self, configmap: str | None = None) -> str:
        """One line for the log and the event: the file, the fields, the fix.

        Args:
            configmap: "namespace/name" of the ConfigMap mounted at `path`, when known.
        """
        source = f"ConfigMap {configmap} ({self.path.name})" if configmap else str(self.path)
        label = _LABELS[self.catalog]
        if self.error is None:
            return f"{label} reloaded from {source}: sha256 {self.digest}, {self.entries} entries"
        builtin, flag = _FILES[self.catalog]
        check = (
            f"the format `llmctl calibrate` writes; `llmctl {flag} FILE plan ...` checks a file"
            if self.catalog == "calibration"
            else f"the format of the built-in {builtin}; `llmctl {flag} FILE catalog "
            f"{builtin.removesuffix('.yaml')}` checks a file"
        )
        return (
            f"{label} {self.path} refused, still using the last good one "
            f"(sha256 {self.kept}): {self.error.problem}. Fix: correct it in {source} "
            f"({check})"
        )


@dataclass
class _File:
    kind: CatalogKind
    path: Path
    parse: Callable[[str, str], tuple[Any, ...]]
    entries: tuple[Any, ...]
    good: str  # digest of the content in use
    seen: str  # key of the content last read (digest, or the read error)


def _read(path: Path) -> tuple[str, str]:
    """(digest, text) of a catalog file.

    Raises:
        CatalogError: unreadable or not UTF-8.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CatalogError(str(path), f"cannot be read ({err.strerror})") from err
    digest = hashlib.sha256(data).hexdigest()[:12]
    try:
        return digest, data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CatalogError(str(path), f"not UTF-8 text ({err.reason} at byte {err.start})") from err


def _parse(parse: Callable[[str, str], tuple[Any, ...]], text: str, path: Path) -> Any:
    """`parse(text)`, any failure a CatalogError.

    NOTE: whatever a user's bytes make the parser raise (YAML nested deep enough to
    exhaust the stack raises RecursionError) must not fail the pass that read them.
    """
    try:
        return parse(text, str(path))
    except CatalogError:
        raise
    except Exception as exc:
        raise CatalogError(str(path), f"cannot be parsed ({type(exc).__name__})") from exc


class CatalogFiles:
    """The catalog in use, from the built-in files or custom ones re-read when they change.

    Thread-safe: reconcile passes run in Kopf's thread pool; one of them refreshes while
    the others keep the catalog they read (a pass never mixes two catalogs).
    """

    def __init__(
        self,
        models_path: Path | None = None,
        gpus_path: Path | None = None,
        interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        calibration_path: Path | None = None,
    ) -> None:
        """Load the catalogs; no last good one exists yet.

        Args:
            models_path: a models YAML file replacing the built-in one.
            gpus_path: a GPU YAML file replacing the built-in one.
            interval_s: `refresh()` re-reads the files at most this often.
            clock: monotonic seconds (tests pass their own).
            calibration_path: a fleet calibration file (`llmctl calibrate`); None: none.

        Raises:
            CatalogError: a custom file that cannot be read or parsed, naming the field.
        """
        builtin = load_catalog()
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next_check = clock() + interval_s
        self._files: list[_File] = []
        models: tuple[ModelEntry, ...] = builtin.models
        gpus: tuple[GpuType, ...] = builtin.gpus
        if models_path is not None:
            models = self._add("model", models_path, parse_models)
        if gpus_path is not None:
            gpus = self._add("gpu", gpus_path, parse_gpus)
        calibrations: tuple[Calibration, ...] = ()
        if calibration_path is not None:
            calibrations = self._add("calibration", calibration_path, parse_calibrations)
        self._catalog = Catalog(models=models, gpus=gpus, calibrations=calibrations)

    def _add(
        self, kind: CatalogKind, path: Path, parse: Callable[[str, str], tuple[Any, ...]]
    ) -> Any:
        digest, text = _read(path)
        entries = _parse(parse, text, path)
        self._files.append(_File(kind, path, parse, entries, good=digest, seen=digest))
        return entries

    @property
    def catalog(self) -> Catalog:
        """The catalog in use: the last good content of every file."""
        return self._catalog

    @property
    def paths(self) -> dict[CatalogKind, Path]:
        """The custom files, by catalog (built-in ones are not listed)."""
        return {f.kind: f.path for f in self._files}

    def refresh(self) -> list[Change]:
        """Re-read the custom files if `interval_s` has passed since the last check.

        Returns:
            One Change per file whose content differs from what the last check read
            (valid: now in use; invalid: refused, the last good one kept); [] when nothing
            changed, when it is too early, or while another thread is refreshing.
        """
        if not self._files or not self._lock.acquire(blocking=False):
            return []
        try:
            now = self._clock()
            if now < self._next_check:
                return []
            self._next_check = now + self.interval_s
            changes = [c for f in self._files if (c := self._check(f)) is not None]
            if any(c.ok for c in changes):
                entries = {f.kind: f.entries for f in self._files}
                self._catalog = Catalog(
                    models=entries.get("model", self._catalog.models),
                    gpus=entries.get("gpu", self._catalog.gpus),
                    calibrations=entries.get("calibration", self._catalog.calibrations),
                )
            return changes
        finally:
            self._lock.release()

    def use_calibrations(self, calibrations: tuple[Calibration, ...], text: str) -> None:
        """Use a calibration fitted in this process (self-calibration) at once.

        Args:
            calibrations: the new calibration.
            text: the file content it was written as; when the calibration file shows
                exactly these bytes later (kubelet has synced the ConfigMap), that is not
                a change.
        """
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        with self._lock:
            for file in self._files:
                if file.kind == "calibration":
                    file.entries, file.good, file.seen = calibrations, digest, digest
            self._catalog = replace(self._catalog, calibrations=calibrations)

    def _check(self, file: _File) -> Change | None:
        try:
            digest, text = _read(file.path)
        except CatalogError as err:
            if file.seen == err.problem:
                return None
            file.seen = err.problem
            return Change(file.kind, file.path, "", file.good, len(file.entries), err)
        if digest == file.seen:
            return None
        file.seen = digest
        try:
            entries = _parse(file.parse, text, file.path)
        except CatalogError as err:
            return Change(file.kind, file.path, digest, file.good, len(file.entries), err)
        file.entries, file.good = entries, digest
        return Change(file.kind, file.path, digest, digest, len(entries))
