"""Coverage-guided fuzzing of every file parser (tests/fuzz/run.py, atheris) on a fixed budget,
and every input a fuzzer ever caught replayed: each loads or raises this package's typed error.
"""
from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fuzz.seeds import write_seeds
from fuzz.targets import TARGETS, Workspace, check, companions, run_target

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "tests" / "fuzz"
RUNS = 3000


@pytest.fixture(scope="module")
def seeds():
    return write_seeds(ROOT / "build" / "fuzz" / "seeds")


REGRESSIONS = sorted(p for p in (FUZZ / "regressions").glob("*/*") if p.is_file())


@pytest.mark.parametrize("path", REGRESSIONS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_caught_inputs_are_typed_errors(seeds, path):
    target = path.parent.name
    check(target, path.read_bytes(), Workspace(companions(target, seeds)))


@pytest.mark.parametrize("target", TARGETS)
def test_seeds_load(seeds, target):
    """The seeds are valid files, so the fuzzer starts from inputs that reach every parser's end."""
    ws = Workspace(companions(target, seeds))
    for path in sorted((seeds / target).iterdir()):
        run_target(target, path.read_bytes(), ws)


@pytest.fixture(scope="module")
def campaigns(seeds, tmp_path_factory):
    """Every target's fixed-budget run, two at a time (CI has two cores)."""
    def run(target):
        out = tmp_path_factory.mktemp(target)
        return subprocess.run([sys.executable, str(FUZZ / "run.py"), target, f"-runs={RUNS}", "-seed=1",
                               f"-artifact_prefix={out}/", str(out / "corpus")],
                              cwd=ROOT, capture_output=True, text=True, timeout=900)
    with ThreadPoolExecutor(2) as pool:
        return dict(zip(TARGETS, pool.map(run, TARGETS)))


@pytest.mark.parametrize("target", TARGETS)
def test_fixed_budget_finds_nothing(campaigns, target):
    proc = campaigns[target]
    tail = proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    assert f"Done {RUNS} runs" in proc.stderr, tail
