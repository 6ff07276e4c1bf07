"""The only module that talks to the Hugging Face Hub: a model's own files, read for its shape.

`resolve()` turns a model reference into a `ResolvedModel` (`catalog.resolve` does the pure
part): a Hugging Face id (its config.json, fetched through the official `huggingface_hub`
client: `hf_hub_download`, its on-disk cache layout, HF_ENDPOINT, a token), a local
directory holding config.json, a config.json file, or a local .gguf file (its header only,
through ggml's own `gguf.GGUFReader`). Every request has a timeout and the whole fetch a
deadline; answers are kept on disk (huggingface_hub's cache under `HubOptions.cache_dir`)
and for a few minutes in this process. Errors are classified here, once: `ModelNotFound`
(permanent: the id, revision or config.json does not exist, or is not cached and the
process is offline), `ModelGated` (a token is
missing or refused: name the Secret), `HubUnavailable` (network, timeout, 5xx: retry).

Called by `llmctl` (plan, estimate, render) and by the operator's reconcile
(`reconcile.run`) for a model the catalog does not know.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from llm_operator.catalog.resolve import (
    ConfigError,
    GgufHeader,
    ResolvedModel,
    architecture_from_config,
    architecture_from_gguf,
)

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
MAX_GGUF_ARRAY = 4096  # longer GGUF arrays are read as their length
MEMO_TTL_S = 300.0  # how long a fetched config.json is reused without asking the Hub again

T = TypeVar("T")


class HubError(Exception):
    """The Hub could not give a model's config.json.

    Attributes:
        model: the model id (or path) asked for.
    """

    def __init__(self, model: str, message: str) -> None:
        self.model = model
        super().__init__(message)


class ModelNotFound(HubError):
    """No such model, revision or config.json, or none cached while offline (permanent
    until the spec or the settings change)."""


class ModelGated(HubError):
    """The model is gated or private and the token is missing or refused (401/403)."""


class HubUnavailable(HubError):
    """The Hub did not answer (network, timeout, 429/5xx): worth retrying."""


@dataclass(frozen=True)
class HubOptions:
    """How to reach the Hub.

    Attributes:
        endpoint: the Hub's URL; None: HF_ENDPOINT, else https://huggingface.co.
        cache_dir: huggingface_hub's cache directory; None: HF_HUB_CACHE, else
            $HF_HOME/hub, else ~/.cache/huggingface/hub (read when asked, not at import).
        timeout_s: each HTTP request's timeout; the whole fetch (the library retries
            network errors) gets three times that.
        offline: use only the on-disk cache; None: HF_HUB_OFFLINE.
    """

    endpoint: str | None = None
    cache_dir: Path | None = None
    timeout_s: float = 10.0
    offline: bool | None = None

    def resolved_endpoint(self) -> str | None:
        """The endpoint to use: this one, else HF_ENDPOINT as set now (None: the default)."""
        return self.endpoint or os.environ.get("HF_ENDPOINT", "").strip() or None

    def resolved_cache_dir(self) -> Path | None:
        """The cache directory: this one, else HF_HUB_CACHE or HF_HOME as set now (None:
        huggingface_hub's default)."""
        if self.cache_dir is not None:
            return self.cache_dir
        if cache := os.environ.get("HF_HUB_CACHE", "").strip():
            return Path(cache)
        if home := os.environ.get("HF_HOME", "").strip():
            return Path(home) / "hub"
        return None

    def is_offline(self) -> bool:
        """Whether to stay off the network."""
        if self.offline is not None:
            return self.offline
        return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


_memo: dict[tuple[str, str, str], tuple[float, dict[str, Any]]] = {}
_memo_lock = threading.Lock()


def clear_memo() -> None:
    """Forget the configs fetched by this process (tests; a changed revision)."""
    with _memo_lock:
        _memo.clear()


def _with_deadline(fn: Callable[[], T], deadline_s: float, model: str) -> T:
    """Run `fn` with an overall deadline.

    NOTE: huggingface_hub retries network errors with backoff (and a longer timeout) before
    it gives up; a reconcile pass must not wait minutes for that. The fetch runs in a daemon
    thread; past the deadline the caller gets HubUnavailable and the thread finishes (or
    not) on its own, its result dropped. huggingface_hub also closes its shared HTTP client
    when a connection is refused, which can fail a fetch in flight on another thread; that
    failure is classified as HubUnavailable too, and the next pass asks again.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as err:  # handed to the caller below
            box["error"] = err

    worker = threading.Thread(target=run, name=f"hub-fetch {model}", daemon=True)
    worker.start()
    worker.join(deadline_s)
    if worker.is_alive():
        raise HubUnavailable(model, f"{model}: the Hub did not answer within {deadline_s:g} s")
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def _classify(err: Exception, model: str, where: str) -> HubError:
    """One place that says what a huggingface_hub failure means."""
    if isinstance(err, GatedRepoError):
        return ModelGated(
            model,
            f"{where} is gated: accept its license on the Hub with the "
            "account whose token is used, and give that token",
        )
    if isinstance(err, RevisionNotFoundError):
        return ModelNotFound(model, f"{where}: no such revision on the Hub")
    if isinstance(err, RemoteEntryNotFoundError):
        return ModelNotFound(
            model, f"{where} has no {CONFIG_FILE} (a GGUF-only or non-transformers repository?)"
        )
    if isinstance(err, RepositoryNotFoundError):
        return ModelNotFound(
            model, f"{where}: no such model on the Hub (or it is private and needs a token)"
        )
    if isinstance(err, HFValidationError):
        return ModelNotFound(model, f"{model!r} is neither a local path nor a Hugging Face id")
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code if err.response is not None else 0
        if status in (401, 403):
            return ModelGated(
                model,
                f"{where}: the Hub refused access ({status}); the token "
                "is missing, invalid or has no read access to it",
            )
        if status == 404:
            return ModelNotFound(model, f"{where}: not found on the Hub (404)")
        return HubUnavailable(model, f"{where}: the Hub answered {status or 'an error'}")
    if isinstance(err, OfflineModeIsEnabled | LocalEntryNotFoundError):
        cause = err.__cause__ or err.__context__
        reason = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        return HubUnavailable(
            model, f"{where}: not in the local cache and the Hub cannot be reached{reason}"
        )
    # Anything else (httpx2's ConnectError, TimeoutException, an OSError) is the network.
    return HubUnavailable(model, f"{where}: {type(err).__name__}: {err}")


def fetch_config(
    model_id: str,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    options: HubOptions | None = None,
) -> dict[str, Any]:
    """A model's config.json from the Hub (or huggingface_hub's on-disk cache).

    Args:
        model_id: the Hugging Face id, e.g. meta-llama/Llama-3.1-8B-Instruct.
        revision: branch, tag or commit (None: main).
        token: the token for gated or private models; None: huggingface_hub's own
            (HF_TOKEN, `hf auth login`); False: none.
        options: endpoint, cache, timeout, offline.

    Raises:
        ModelNotFound, ModelGated, HubUnavailable: classified failures.
        ConfigError: the file is not JSON.
    """
    opts = options or HubOptions()
    endpoint = opts.resolved_endpoint()
    where = f"{model_id}@{revision or 'main'}"
    key = (endpoint or "", model_id, revision or "main")
    now = time.monotonic()
    with _memo_lock:
        hit = _memo.get(key)
    if hit is not None and now - hit[0] < MEMO_TTL_S:
        return copy.deepcopy(hit[1])

    def download() -> str:
        return hf_hub_download(
            model_id,
            CONFIG_FILE,
            revision=revision,
            cache_dir=opts.resolved_cache_dir(),
            token=token,
            endpoint=endpoint,
            etag_timeout=opts.timeout_s,
            local_files_only=opts.is_offline(),
        )

    try:
        path = _with_deadline(download, 3 * opts.timeout_s, model_id)
    except HubError:
        raise
    except LocalEntryNotFoundError as err:
        if opts.is_offline():
            # NOTE: offline is a setting, not an outage: asking again cannot help.
            raise ModelNotFound(
                model_id,
                f"{where}: not in the local cache, and the Hub is not asked (HF_HUB_OFFLINE)",
            ) from err
        raise _classify(err, model_id, where) from err
    except Exception as err:  # classified in one place
        raise _classify(err, model_id, where) from err
    config = read_config_file(Path(path), origin=f"{CONFIG_FILE} of {where}")
    with _memo_lock:
        _memo[key] = (now, copy.deepcopy(config))
    return config


def read_config_file(path: Path, origin: str | None = None) -> dict[str, Any]:
    """A config.json (or any JSON object) from disk.

    Raises:
        ConfigError: unreadable, or not a JSON object.
    """
    origin = origin or str(path)
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise ConfigError(f"cannot read {origin}: {err.strerror}") from err
    except json.JSONDecodeError as err:
        raise ConfigError(f"{origin} is not JSON: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{origin} is not a JSON object")
    return data


def read_gguf_header(path: Path) -> GgufHeader:
    """The key/value metadata and tensor shapes of a GGUF file (its header; the tensor
    data is memory-mapped by GGUFReader but never read).

    Raises:
        ConfigError: not a readable GGUF file.
    """
    # NOTE: imported here: gguf brings numpy (~20 MiB of the operator's memory), and
    # most operators never plan a GGUF file.
    from gguf import GGUFReader, GGUFValueType

    try:
        reader = GGUFReader(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read {path} as GGUF: {err}") from err
    metadata: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if not field.types:
            continue
        if field.types[0] == GGUFValueType.ARRAY and len(field.data) > MAX_GGUF_ARRAY:
            # The token list and merges run to 100k+ strings: only their length is needed.
            metadata[name] = len(field.data)
            continue
        try:
            metadata[name] = field.contents()
        except (ValueError, UnicodeDecodeError):
            continue
    tensors = tuple((t.name, tuple(int(d) for d in t.shape)) for t in reader.tensors)
    return GgufHeader(metadata=metadata, tensors=tensors)


def _local_path(model: str) -> Path | None:
    """`model` as a path that exists here, or None (then it is a Hugging Face id).

    NOTE: a name can be no path at all: longer than the file system allows (ENAMETOOLONG)
    or `~user` of no user; asking the file system about it must not fail the caller.
    """
    try:
        local = Path(model).expanduser()
        return local if local.exists() else None
    except (OSError, RuntimeError, ValueError):
        return None


def resolve(
    model: str,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    options: HubOptions | None = None,
) -> ResolvedModel:
    """The shape of `model`: a local directory with config.json, a config.json file, a
    local .gguf file, or else a Hugging Face id (config.json from the Hub).

    Args:
        model: path or Hugging Face id.
        revision: the Hub revision (ignored for local paths).
        token: see `fetch_config`.
        options: see `fetch_config`.

    Raises:
        ModelNotFound, ModelGated, HubUnavailable: the Hub could not give config.json.
        ConfigError: the file does not describe a model the planner can size.
    """
    local = _local_path(model)
    if local is not None and local.is_dir():
        config_path = local / CONFIG_FILE
        if not config_path.is_file():
            raise ConfigError(
                f"{local} has no {CONFIG_FILE}; give a .gguf file or a directory with "
                f"{CONFIG_FILE}, or set spec.model.architecture"
            )
        origin = str(config_path)
        return ResolvedModel(
            architecture_from_config(read_config_file(config_path), origin), origin=origin
        )
    if local is not None and local.is_file():
        if local.suffix.lower() == ".gguf":
            return architecture_from_gguf(read_gguf_header(local), f"GGUF header of {local}")
        origin = str(local)
        return ResolvedModel(
            architecture_from_config(read_config_file(local), origin), origin=origin
        )
    config = fetch_config(model, revision=revision, token=token, options=options)
    origin = f"{CONFIG_FILE} of {model}@{revision or 'main'}"
    return ResolvedModel(architecture_from_config(config, origin), origin=origin)
