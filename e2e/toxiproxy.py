"""Shopify's toxiproxy (built by e2e/cluster/tools.sh) as a fault proxy on loopback.

`Toxiproxy` starts `toxiproxy-server` on a free port and drives its HTTP API (v2.5.0,
api.go: POST /proxies, POST /proxies/{name}/toxics, DELETE /proxies/{name}/toxics/{toxic},
POST /proxies/{name} to enable or disable). A proxy listens on 127.0.0.1 and forwards
to its upstream; a toxic distorts what passes (toxics/*.go: `latency` {latency, jitter}
in ms, `timeout` {timeout} ms, 0 = hold every byte until removed, `reset_peer` {timeout}
ms then a TCP RST, `bandwidth` {rate} KB/s, `slicer`). Used by e2e/tests/test_network_faults.py.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from operator_proc import free_port

TOOLS_SH = Path(__file__).resolve().parent / "cluster" / "tools.sh"


def server_binary() -> Path:
    """The pinned toxiproxy-server, built (or found up to date) by tools.sh."""
    subprocess.run([str(TOOLS_SH), "toxiproxy"], check=True, capture_output=True)
    bin_dir = subprocess.run(
        [str(TOOLS_SH), "--print-bin-dir"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return Path(bin_dir) / "toxiproxy-server"


class Toxiproxy:
    """A running toxiproxy-server; a context manager that stops it."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(server_binary()), "-host", "127.0.0.1", "-port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                self._call("GET", "/version")
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError(
                        f"toxiproxy-server did not start (log: {log_path})"
                    ) from None
                time.sleep(0.2)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.api + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            text = resp.read().decode()
            is_json = resp.headers.get_content_type() == "application/json"
        return json.loads(text) if text and is_json else text

    def proxy(self, name: str, upstream: str) -> str:
        """A proxy to `upstream` ("host:port"); returns where it listens ("127.0.0.1:port")."""
        listen = f"127.0.0.1:{free_port()}"
        self._call("POST", "/proxies", {"name": name, "listen": listen, "upstream": upstream})
        return listen

    def enabled(self, name: str, on: bool) -> None:
        """Disable (every connection closed, new ones refused) or enable a proxy."""
        self._call("POST", f"/proxies/{name}", {"enabled": on})

    @contextmanager
    def toxic(
        self, proxy: str, kind: str, stream: str = "downstream", **attributes: int
    ) -> Iterator[None]:
        """A toxic on `proxy` while the block runs (`stream`: downstream = towards the client,
        upstream = towards the server)."""
        name = f"{kind}-{stream}"
        self._call(
            "POST",
            f"/proxies/{proxy}/toxics",
            {
                "name": name,
                "type": kind,
                "stream": stream,
                "toxicity": 1.0,
                "attributes": attributes,
            },
        )
        try:
            yield
        finally:
            try:
                self._call("DELETE", f"/proxies/{proxy}/toxics/{name}")
            except urllib.error.HTTPError as err:
                if err.code != 404:
                    raise

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self._log.close()

    def __enter__(self) -> Toxiproxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
