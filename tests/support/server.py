"""The real thing as users run it: `broker serve` (gunicorn) in its own process, and the
`broker` command as a subprocess."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import requests

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_broker(env: dict[str, str], *, workers: int = 2, timeout: float = 30.0,
                   log_path: Path | None = None) -> Iterator[str]:
    """Start `broker serve` (gunicorn) as a real process; yield its base URL.

    With ``log_path``, everything the server prints is kept there (tests search it for secrets).
    """
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    full_env = {**os.environ, "BROKER_ISSUER": base, **env}
    with contextlib.ExitStack() as stack:
        # A file, never a pipe: a chatty server must not block on a full pipe buffer.
        out: IO[bytes] = stack.enter_context(open(log_path, "wb") if log_path is not None
                                             else tempfile.TemporaryFile())
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "serve", "--port", str(port), "--workers", str(workers)],
            env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    out.flush()
                    out.seek(0)
                    printed = out.read().decode(errors="replace")
                    raise RuntimeError(f"broker exited early ({proc.returncode}):\n{printed}")
                try:
                    if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except (requests.ConnectionError, requests.Timeout):
                    pass            # not listening yet, or too busy starting to answer in time
                if time.monotonic() > deadline:
                    raise RuntimeError("broker did not become healthy")
                time.sleep(0.1)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def broker_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
               without: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run `broker ARGS…` in the repository with this environment plus ``env``, less the
    variables named in ``without``; output captured as text."""
    base = {k: v for k, v in os.environ.items() if k not in without}
    return subprocess.run([sys.executable, "-m", "broker.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env={**base, **(env or {})}, timeout=timeout)
