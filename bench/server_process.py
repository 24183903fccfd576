"""A server subprocess on 127.0.0.1 (ours or a peer), its output in a log file (a pipe nobody
reads would block it once full), waited for until a readiness path answers 200 (bounded),
stopped. Used by bench/http_load.py and the server tests."""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent


class ServerProcess:
    """``cmd`` started in the repository root. ``url`` None: read from the first
    ``on http://127.0.0.1:PORT`` the server prints (``wrinklefree-rt serve --port 0`` does)."""

    def __init__(self, name: str, cmd: list[str], url: str | None, ready_path: str, start_timeout_s: float):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"wfrt-{name}-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_timeout_s
        self.url = url
        while True:
            if self.url is None:
                found = re.search(r"on (http://127\.0\.0\.1:\d+)", self.output())
                self.url = found and found.group(1)
            if self.url is not None:
                try:
                    if httpx.get(self.url + ready_path, timeout=5).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{name} did not come up:\n{self.output()[-3000:]}")
            time.sleep(0.1)

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
        self.log.close()
        os.unlink(self.log.name)
