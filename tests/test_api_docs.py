"""The Python examples of docs/api.md and docs/quickstart.md run as written, and the CLI's
demo / generate commands work, against the random demo model (no download)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from wrinklefree_rt import cli

DOCS = Path(__file__).resolve().parent.parent / "docs"


def python_blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    assert cli.main(["demo", "--save", str(root / "demo-model")]) == 0
    return root


EXAMPLES = [(name, i) for name in ("api.md", "quickstart.md") for i in range(len(python_blocks(name)))]


@pytest.mark.parametrize("name, index", EXAMPLES, ids=[f"{n}-{i}" for n, i in EXAMPLES])
def test_doc_example_runs(demo_dir, monkeypatch, name, index):
    monkeypatch.chdir(demo_dir)
    namespace = {"__name__": "__doc_example__"}
    exec(compile(python_blocks(name)[index], f"{name}[{index}]", "exec"), namespace)
    engine = namespace.get("engine")
    if engine is not None:
        engine.close()


def test_cli_generate(demo_dir, capsys):
    model = str(demo_dir / "demo-model")
    assert cli.main(["generate", model, "Hello", "--max-tokens", "6", "--stats"]) == 0
    assert "6 tokens (length)" in capsys.readouterr().err
    assert cli.main(["generate", model, "Hi", "--chat", "--dlm", "--block-size", "8", "--max-tokens", "8",
                     "--stats", "--ignore-eos"]) == 0
    assert "8 tokens (length)" in capsys.readouterr().err
    assert cli.main(["generate", str(demo_dir / "missing"), "x"]) == 1
    assert "missing" in capsys.readouterr().err


def test_cli_demo_runs(capsys):
    assert cli.main(["demo", "--backend", "trio"]) == 0
    out = capsys.readouterr().out
    assert "engine:" in out and out.count("done (") == 5
    assert cli.main(["nonsense"]) == 2
