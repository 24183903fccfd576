"""A ``wrinklefree-rt serve`` subprocess on 127.0.0.1 (ephemeral port) for the server tests:
started, waited for (bounded), reached, stopped."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 60


class Server:
    def __init__(self, model_dir: Path, *args: str, kind: str = "uvicorn", api_key: str | None = None,
                 model: str = "tiny"):
        self.kind, self.api_key, self.model = kind, api_key, model
        cmd = [sys.executable, "-m", "wrinklefree_rt.cli", "serve", str(model_dir), "--port", "0",
               "--served-model-name", model, "--server", kind, "--log-level", "warning", *args]
        if api_key:
            cmd += ["--api-key", api_key]
        # Output to a file, not a pipe: a pipe nobody reads would block the server once full.
        self.log = tempfile.NamedTemporaryFile(prefix="wfrt-serve-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        self.url = None
        while True:  # the URL is printed first; the engine is up once /health answers
            if self.url is None:
                found = re.search(r"on (http://127\.0\.0\.1:\d+)", Path(self.log.name).read_text())
                self.url = found and found.group(1)
            if self.url is not None:
                try:
                    if httpx.get(self.url + "/health", timeout=5).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"the server did not come up: {self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        return Path(self.log.name).read_text()

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=self.api_key or "unused", max_retries=0,
                             timeout=REQUEST_TIMEOUT_S)

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.url + "/v1", api_key=self.api_key or "unused", max_retries=0,
                                  timeout=REQUEST_TIMEOUT_S)

    def post(self, path: str, body, **kw) -> httpx.Response:
        content = json.dumps(body) if isinstance(body, dict) else body
        headers = {**self.headers, "content-type": "application/json", **kw.pop("headers", {})}
        return httpx.post(self.url + path, content=content, headers=headers, timeout=REQUEST_TIMEOUT_S, **kw)

    def metrics(self) -> dict[str, float]:
        """Sample name (with labels) -> value."""
        text = httpx.get(self.url + "/metrics", timeout=REQUEST_TIMEOUT_S).text
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(15)
        self.log.close()
        Path(self.log.name).unlink()


def metric(m: dict, name: str, model: str = "tiny", **labels) -> float:
    """One sample of a ``Server.metrics()`` dict, by name and labels (the model's filled in)."""
    labels = {"model_name": model, **labels}
    return m.get("wrinklefree:" + name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}", 0.0)
