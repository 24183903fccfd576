"""A ``wrinklefree-rt serve`` subprocess on 127.0.0.1 (ephemeral port) for the server tests:
started, waited for (bounded), reached, stopped."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import openai

from bench.server_process import ServerProcess

START_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 60


class Server(ServerProcess):
    def __init__(self, model_dir: Path, *args: str, kind: str = "uvicorn", api_key: str | None = None,
                 model: str = "tiny"):
        self.kind, self.api_key, self.model = kind, api_key, model
        cmd = [sys.executable, "-m", "wrinklefree_rt.cli", "serve", str(model_dir), "--port", "0",
               "--served-model-name", model, "--server", kind, "--log-level", "warning", *args]
        if api_key:
            cmd += ["--api-key", api_key]
        super().__init__("serve", cmd, None, "/health", START_TIMEOUT_S)

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


def metric(m: dict, name: str, model: str = "tiny", **labels) -> float:
    """One sample of a ``Server.metrics()`` dict, by name and labels (the model's filled in)."""
    labels = {"model_name": model, **labels}
    return m.get("wrinklefree:" + name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}", 0.0)
