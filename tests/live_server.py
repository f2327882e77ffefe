"""Run a real `chameleon-serve serve` process for a test, and always stop it.

    from tests.live_server import live_server          # or `from live_server import ...` inside tests/

    with live_server("--model", str(ckpt), "--api-key", "k") as server:
        httpx.get(server.url + "/v1/models", headers={"Authorization": "Bearer k"})

    # a module-scoped pytest fixture, shared by the tests of one file:
    @pytest.fixture(scope="module")
    def server(tmp_path_factory):
        ckpt = write_random_checkpoint(tmp_path_factory.mktemp("ckpt"))
        with live_server("--model", str(ckpt)) as s:
            yield s

What it does:
- starts `python -m chameleon_serve.cli serve --host 127.0.0.1 --port <free port> <args>` as a
  subprocess (same interpreter), stdout+stderr to a log file;
- waits for /health (socket up), then, unless `wait_ready=False`, for /ready = 200 (model loaded);
  `/ready` needs no key only when the server has none: pass `api_key=` when it has;
- yields a `LiveServer` (`url`, `port`, `process`, `log()`, `stop()`);
- on exit sends SIGTERM (the server's graceful shutdown), waits `stop_timeout` seconds, then SIGKILL.
  A server that dies or never becomes ready raises RuntimeError with the tail of its log.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LiveServer:
    url: str  # http://127.0.0.1:<port>, no trailing slash
    port: int
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then SIGKILL after `timeout` s. Returns the exit status. Safe to call twice."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode


@contextlib.contextmanager
def live_server(
    *args: str,
    wait_ready: bool = True,
    api_key: str | None = None,
    startup_timeout: float = 120.0,
    stop_timeout: float = 20.0,
    env: dict[str, str] | None = None,
) -> Iterator[LiveServer]:
    """Starts the server with `args` (after --host/--port), yields it once up, always stops it."""
    port = free_port()
    log_file = tempfile.NamedTemporaryFile(prefix="chameleon-serve-", suffix=".log", delete=False)
    command = [sys.executable, "-m", "chameleon_serve.cli", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    process = subprocess.Popen(
        command, stdout=log_file, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env={**os.environ, **(env or {})}
    )
    server = LiveServer(f"http://127.0.0.1:{port}", port, process, Path(log_file.name))
    try:
        _wait_until(server, "/health", startup_timeout, api_key=None)
        if wait_ready:
            _wait_until(server, "/ready", startup_timeout, api_key=api_key)
        yield server
    finally:
        server.stop(stop_timeout)
        log_file.close()


def _wait_until(server: LiveServer, path: str, timeout: float, api_key: str | None) -> None:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"server exited with status {server.process.returncode}:\n{server.log_tail()}")
        try:
            if httpx.get(server.url + path, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass  # socket not up yet
        time.sleep(0.1)
    raise RuntimeError(f"server gave no 200 on {path} within {timeout:.0f} s:\n{server.log_tail()}")
