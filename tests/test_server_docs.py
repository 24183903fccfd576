"""docs/server.md as written: its `openai` examples against a `wrinklefree-rt serve` subprocess,
its mounting examples in-process; ``create_app``'s diffusion default held to the library; the
``serve`` command's refusals. All on the random demo model."""
from __future__ import annotations

import re
from pathlib import Path

import anyio
import httpx
import pytest
from server_process import Server

from wrinklefree_rt import Engine, cli
from wrinklefree_rt.server import create_app

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / "server.md").read_text(), flags=re.DOTALL)


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("server-docs")
    assert cli.main(["demo", "--save", str(root / "demo-model")]) == 0
    return root / "demo-model"


def test_openai_client_examples(demo_model, capsys):
    client_blocks = [b for b in python_blocks() if "OpenAI(" in b]
    assert client_blocks
    server = Server(demo_model, "--threads", "1", model="demo-model")
    try:
        for block in client_blocks:
            code = block.replace("http://127.0.0.1:8000", server.url)
            exec(compile(code, "server.md", "exec"), {"__name__": "__doc_example__"})  # noqa: S102  the doc runs as written
    finally:
        server.stop()
    out = capsys.readouterr().out
    assert "CompletionUsage(completion_tokens=16" in out


def test_mounting_examples(demo_model, monkeypatch, capsys):
    monkeypatch.chdir(demo_model.parent)
    namespace = {"__name__": "__doc_example__"}
    blocks = [b for b in python_blocks() if "OpenAI(" not in b]
    assert len(blocks) == 2
    for block in blocks:
        exec(compile(block, "server.md", "exec"), namespace)  # noqa: S102  the doc runs as written
    assert len(capsys.readouterr().out.strip().splitlines()) >= 2


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_create_app_diffusion_default_equals_the_library(demo_model, backend):
    engine = Engine.from_pretrained(demo_model, num_threads=1, max_num_seqs=4)
    app = create_app(engine, model_name="demo", diffusion={"block_size": 8, "threshold": 0.5})
    body = {"model": "demo", "prompt": "Once upon a time", "max_tokens": 24, "ignore_eos": True}

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                dlm = (await client.post("/v1/completions", json=body)).json()
                ar = (await client.post("/v1/completions", json=dict(body, diffusion=False, temperature=0))).json()
                own = (await client.post("/v1/completions", json=dict(body, diffusion={"block_size": 4}))).json()
            params = {"max_tokens": 24, "ignore_eos": True}
            want_dlm = await engine.generate("Once upon a time", params, diffusion={"block_size": 8, "threshold": 0.5})
            want_ar = await engine.generate("Once upon a time", params)
            want_own = await engine.generate("Once upon a time", params, diffusion={"block_size": 4, "threshold": 0.5})
        return dlm, ar, own, want_dlm, want_ar, want_own

    dlm, ar, own, want_dlm, want_ar, want_own = anyio.run(main, backend=backend)
    assert dlm["choices"][0]["text"] == want_dlm.text and ar["choices"][0]["text"] == want_ar.text
    assert own["choices"][0]["text"] == want_own.text  # request fields merged over the default
    assert want_dlm.text != want_ar.text


def test_serve_refuses_bad_settings(demo_model, tmp_path, capsys):
    assert cli.main(["serve", str(tmp_path / "missing"), "--port", "0"]) == 1
    assert "missing" in capsys.readouterr().err
    assert cli.main(["serve", str(demo_model), "--port", "0", "--dlm", '{"block_size": 0}']) == 1
    assert "block_size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["serve", str(demo_model), "--dlm", "not json"])
    assert "--dlm" in capsys.readouterr().err
    assert "serve" in (cli.main(["--help"]) == 0 and capsys.readouterr().out)
