"""A custom catalog file changing under the running operator (a ConfigMap edit, which
kubelet applies by swapping the volume's `..data` symlink): a valid one is used by the
next pass, a malformed one keeps the last good catalog and is reported once (an ERROR
line naming the file, the field and the fix; the metrics; an event on the ConfigMap),
and a bad one at start stops the operator. Through `catalog.reload.CatalogFiles` and the
handlers' `load_catalogs` / `refresh_catalog`; no cluster."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml
from prometheus_client import REGISTRY

from llm_operator import handlers
from llm_operator.catalog import CatalogError
from llm_operator.catalog.reload import CatalogFiles

BUILTIN = Path(handlers.__file__).parent / "catalog" / "data"
H100 = "H100-SXM-80GB"
CONFIGMAP = ("llm-operator", "gpu-prices")


def gpus_yaml(price: Any = 2.5, **h100: Any) -> str:
    """The built-in GPU catalog with the H100's price (and any other field) replaced."""
    doc = yaml.safe_load((BUILTIN / "gpus.yaml").read_text())
    entry = next(g for g in doc["gpus"] if g["name"] == H100)
    entry.update(pricePerHour=price, **h100)
    return yaml.safe_dump(doc, sort_keys=False)


def models_yaml(drop_first: bool = False) -> str:
    doc = yaml.safe_load((BUILTIN / "models.yaml").read_text())
    if drop_first:
        doc["models"] = doc["models"][1:]
    return yaml.safe_dump(doc, sort_keys=False)


def metric(name: str, catalog: str = "gpu") -> float:
    return REGISTRY.get_sample_value(name, {"catalog": catalog}) or 0.0


def failures(catalog: str = "gpu") -> float:
    return metric("llm_operator_catalog_load_failures_total", catalog)


def valid(catalog: str = "gpu") -> float:
    return metric("llm_operator_catalog_valid", catalog)


def last_good(catalog: str = "gpu") -> float:
    return metric("llm_operator_catalog_last_good_timestamp_seconds", catalog)


class Events:
    """What the handlers post through kopf.info / kopf.warn (no operator runs here)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.posted: list[tuple[str, dict[str, Any], str, str]] = []
        monkeypatch.setattr(kopf, "info", self._recorder("Normal"))
        monkeypatch.setattr(kopf, "warn", self._recorder("Warning"))

    def _recorder(self, type_: str) -> Callable[..., None]:
        def post(obj: Any, *, reason: str, message: str = "", **_: Any) -> None:
            self.posted.append((type_, dict(obj), reason, message))

        return post


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> Events:
    return Events(monkeypatch)


@pytest.fixture
def operator_with(monkeypatch: pytest.MonkeyPatch) -> Callable[..., kopf.Memo]:
    """Start the operator's catalog part with settings changed (checking at every pass)."""

    def start(**settings: Any) -> kopf.Memo:
        settings.setdefault("catalog_check_interval_s", 0.0)
        monkeypatch.setattr(
            handlers, "SETTINGS", dataclasses.replace(handlers.SETTINGS, **settings)
        )
        memo = kopf.Memo()
        memo.catalogs = handlers.load_catalogs()
        return memo

    return start


def catalog_of(memo: kopf.Memo) -> Any:
    return memo.catalogs.catalog


def error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name == handlers.__name__
    ]


def _vanish(path: Path) -> None:
    path.unlink()


# Each kind of malformed content: how to make it, and what the ERROR line must name.
MALFORMED: dict[str, tuple[Callable[[Path], None], list[str]]] = {
    "bad YAML": (
        lambda p: p.write_text("gpus:\n  - name: X\n   memoryGB: 80\n"),
        ["not valid YAML at line 3"],
    ),
    "unknown field": (
        lambda p: p.write_text(gpus_yaml(memoryGb=80)),
        [f"gpus[0] ({H100}).memoryGb: Extra inputs are not permitted"],
    ),
    "wrong type": (
        lambda p: p.write_text(gpus_yaml(price="cheap")),
        [f"gpus[0] ({H100}).pricePerHour", "'cheap'"],
    ),
    "negative memory": (
        lambda p: p.write_text(gpus_yaml(memoryGB=-80)),
        [f"gpus[0] ({H100}).memoryGB: Input should be greater than 0 (got -80)"],
    ),
    "empty file": (lambda p: p.write_text(""), ["the file is empty", "`gpus:`"]),
    "vanished file": (_vanish, ["cannot be read (No such file or directory)"]),
    "not UTF-8": (lambda p: p.write_bytes(b"gpus: [\xff]\n"), ["not UTF-8"]),
    "nested too deep": (
        lambda p: p.write_text("gpus: " + "[" * 100_000),
        ["cannot be parsed (RecursionError)"],
    ),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_malformed_content_keeps_the_last_good_catalog_and_is_reported_once(
    kind: str,
    tmp_path: Path,
    operator_with: Callable[..., kopf.Memo],
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "gpus.yaml"
    path.write_text(gpus_yaml(price=2.5))
    memo = operator_with(gpu_catalog=path)
    assert catalog_of(memo).gpu("H100").price_per_hour == 2.5
    assert valid() == 1
    before = failures()

    make_bad, named = MALFORMED[kind]
    make_bad(path)
    with caplog.at_level(logging.INFO):
        handlers.refresh_catalog(memo)
        handlers.refresh_catalog(memo)  # the same bad content again: not reported again

    assert catalog_of(memo).gpu("H100").price_per_hour == 2.5  # the last good one
    assert valid() == 0
    assert failures() == before + 1
    (line,) = error_lines(caplog)
    assert str(path) in line
    for part in named:
        assert part in line, line
    assert "still using the last good one" in line
    assert "Fix:" in line and "llmctl --gpu-catalog FILE catalog gpus" in line

    caplog.clear()
    path.write_text(gpus_yaml(price=3.25))
    with caplog.at_level(logging.INFO):
        handlers.refresh_catalog(memo)
    assert catalog_of(memo).gpu("H100").price_per_hour == 3.25
    assert valid() == 1
    assert failures() == before + 1
    assert not error_lines(caplog)
    assert any("GPU catalog reloaded" in r.getMessage() for r in caplog.records)


def test_each_new_bad_content_is_reported_and_the_good_one_survives_them_all(
    tmp_path: Path, operator_with: Callable[..., kopf.Memo], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "gpus.yaml"
    path.write_text(gpus_yaml(price=2.5))
    memo = operator_with(gpu_catalog=path)
    before = failures()
    for bad in (gpus_yaml(memoryGB=-1), gpus_yaml(memoryGB=-2), "", gpus_yaml(memoryGB=-1)):
        path.write_text(bad)
        for _ in range(3):
            handlers.refresh_catalog(memo)
    assert failures() == before + 4  # four changes of content, twelve checks
    assert len(error_lines(caplog)) == 4
    assert catalog_of(memo).gpu("H100").price_per_hour == 2.5


def test_a_valid_catalog_replaces_the_old_one_and_stamps_the_time(
    tmp_path: Path, operator_with: Callable[..., kopf.Memo]
) -> None:
    path = tmp_path / "gpus.yaml"
    path.write_text(gpus_yaml(price=2.5))
    memo = operator_with(gpu_catalog=path)
    started = last_good()
    assert started > 0
    old = catalog_of(memo)

    path.write_text(gpus_yaml(price=4.0, gpusPerNode=4))
    handlers.refresh_catalog(memo)
    new = catalog_of(memo)
    assert (new.gpu("H100").price_per_hour, new.gpu("H100").gpus_per_node) == (4.0, 4)
    assert new.models == old.models  # the built-in model catalog is untouched
    assert old.gpu("H100").price_per_hour == 2.5  # a pass holding the old one keeps it
    assert last_good() >= started
    assert valid() == 1


def kubelet_volume(root: Path, files: dict[str, str]) -> Path:
    """A ConfigMap volume as kubelet lays it out: <key> -> ..data/<key>, ..data -> ..<ts>."""
    root.mkdir()
    _kubelet_write(root, files, "..2026_01_01_00_00_00.000000001")
    for key in files:
        (root / key).symlink_to(Path("..data") / key)
    return root


def _kubelet_write(root: Path, files: dict[str, str], version: str) -> None:
    """Kubelet's AtomicWriter: a new timestamped directory, `..data_tmp` pointing at it,
    renamed over `..data` (one atomic step), then the old directory removed."""
    (root / version).mkdir()
    for key, text in files.items():
        (root / version / key).write_text(text)
    old = os.readlink(root / "..data") if (root / "..data").is_symlink() else None
    (root / "..data_tmp").symlink_to(version)
    os.rename(root / "..data_tmp", root / "..data")
    if old is not None:
        shutil.rmtree(root / old)


def test_kubelet_symlink_swap_is_seen_through_the_mounted_path(
    tmp_path: Path,
    operator_with: Callable[..., kopf.Memo],
    events: Events,
    caplog: pytest.LogCaptureFixture,
) -> None:
    volume = kubelet_volume(tmp_path / "catalog", {"gpus.yaml": gpus_yaml(price=2.5)})
    path = volume / "gpus.yaml"
    memo = operator_with(gpu_catalog=path, gpu_catalog_configmap=CONFIGMAP)
    before = failures()

    _kubelet_write(volume, {"gpus.yaml": gpus_yaml(price=3.0)}, "..2026_01_01_00_01_00.1")
    handlers.refresh_catalog(memo)
    assert catalog_of(memo).gpu("H100").price_per_hour == 3.0

    _kubelet_write(volume, {"gpus.yaml": gpus_yaml(memoryGB=-80)}, "..2026_01_01_00_02_00.2")
    handlers.refresh_catalog(memo)
    handlers.refresh_catalog(memo)
    assert catalog_of(memo).gpu("H100").price_per_hour == 3.0
    assert failures() == before + 1
    (line,) = error_lines(caplog)
    assert str(path) in line  # the mounted path, not the ..data target
    assert "ConfigMap llm-operator/gpu-prices (gpus.yaml)" in line

    # One event per change, on the ConfigMap (its name is known): reloaded, then refused.
    configmap = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"namespace": "llm-operator", "name": "gpu-prices"},
    }
    assert [(t, o, r) for t, o, r, _ in events.posted] == [
        ("Normal", configmap, "CatalogReloaded"),
        ("Warning", configmap, "CatalogInvalid"),
    ]
    assert events.posted[1][3] == line


def test_without_a_configmap_name_only_the_log_and_metrics_report(
    tmp_path: Path, operator_with: Callable[..., kopf.Memo], events: Events
) -> None:
    path = tmp_path / "gpus.yaml"
    path.write_text(gpus_yaml())
    memo = operator_with(gpu_catalog=path)
    path.write_text("")
    handlers.refresh_catalog(memo)
    assert valid() == 0
    assert events.posted == []


def test_model_and_gpu_catalogs_are_kept_apart(
    tmp_path: Path, operator_with: Callable[..., kopf.Memo]
) -> None:
    gpus, models = tmp_path / "gpus.yaml", tmp_path / "models.yaml"
    gpus.write_text(gpus_yaml(price=2.5))
    models.write_text(models_yaml())
    memo = operator_with(gpu_catalog=gpus, model_catalog=models)
    count = len(catalog_of(memo).models)
    model_failures = failures("model")

    models.write_text("models: {}\n")
    gpus.write_text(gpus_yaml(price=5.0))
    handlers.refresh_catalog(memo)
    assert catalog_of(memo).gpu("H100").price_per_hour == 5.0  # the GPU file still reloads
    assert len(catalog_of(memo).models) == count
    assert (valid("model"), valid("gpu")) == (0, 1)
    assert failures("model") == model_failures + 1

    models.write_text(models_yaml(drop_first=True))
    handlers.refresh_catalog(memo)
    assert len(catalog_of(memo).models) == count - 1
    assert valid("model") == 1


def test_files_are_read_at_most_once_per_interval(tmp_path: Path) -> None:
    path = tmp_path / "gpus.yaml"
    path.write_text(gpus_yaml(price=2.5))
    now = [100.0]
    files = CatalogFiles(gpus_path=path, interval_s=5.0, clock=lambda: now[0])
    path.write_text(gpus_yaml(price=3.0))
    now[0] = 104.9
    assert files.refresh() == []
    assert files.catalog.gpu("H100").price_per_hour == 2.5
    now[0] = 105.0
    (change,) = files.refresh()
    assert change.ok and change.catalog == "gpu" and change.path == path
    assert files.catalog.gpu("H100").price_per_hour == 3.0
    now[0] = 105.1
    path.write_text("")
    assert files.refresh() == []  # checked 0.1 s ago


def test_built_in_catalogs_are_never_reread() -> None:
    files = CatalogFiles(interval_s=0.0)
    assert files.paths == {}
    assert files.refresh() == []


@pytest.mark.parametrize(
    "kind", ["negative memory", "empty file", "vanished file", "nested too deep"]
)
def test_a_bad_custom_catalog_at_start_stops_the_operator(
    kind: str, tmp_path: Path, operator_with: Callable[..., kopf.Memo]
) -> None:
    path = tmp_path / "gpus.yaml"
    path.write_text(gpus_yaml())
    make_bad, named = MALFORMED[kind]
    make_bad(path)
    with pytest.raises(kopf.PermanentError) as err:
        operator_with(gpu_catalog=path)
    message = str(err.value)
    assert str(path) in message and "Not starting" in message
    for part in named:
        assert part in message
    with pytest.raises(CatalogError):  # the same refusal, without the operator around it
        CatalogFiles(gpus_path=path)
