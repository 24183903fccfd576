"""Coverage-guided fuzzing of the file parsers with atheris (libFuzzer for Python).

    python tests/fuzz/run.py TARGET [libFuzzer flags] [CORPUS_DIR ...]

TARGET is one of safetensors, gguf, sglbin, wfrt, config, tokenizer_config (targets.py).
Seeds from real tiny checkpoints are written once to build/fuzz/seeds (seeds.py) and always
read; new interesting inputs go to the first CORPUS_DIR given (else build/fuzz/corpus/TARGET).
Every input must load or raise this package's typed error; anything else, a hang past
-timeout, or memory past the address-space cap is a crash: libFuzzer stops and writes the input
to -artifact_prefix (default build/fuzz/crashes/TARGET-). Such an input goes to
tests/fuzz/regressions/TARGET/ with the fix; test_fuzz_parsers.py replays it in CI.

CI: ``-runs=3000 -seed=1`` per target (test_fuzz_parsers.py). A long campaign, e.g. an hour
per target on all cores:  ``python tests/fuzz/run.py gguf -max_total_time=3600 -jobs=2``.
"""
from __future__ import annotations

import os
import resource
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(HERE)]

import atheris  # noqa: E402

# Address space the parsers may add on top of the interpreter's: a size field that the file
# does not back must be refused, not allocated.
HEADROOM = 512 << 20


def _vm_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[1].startswith("-"):
        sys.exit(__doc__)
    target = argv[1]
    with atheris.instrument_imports(include=["wrinklefree_rt", "gguf"]):
        from targets import TARGETS, Workspace, check, companions
    if target not in TARGETS:
        sys.exit(f"unknown target {target!r}; one of {', '.join(TARGETS)}")
    from seeds import write_seeds

    seeds = write_seeds(ROOT / "build" / "fuzz" / "seeds")
    flags = [a for a in argv[2:] if a.startswith("-")]
    dirs = [a for a in argv[2:] if not a.startswith("-")] or [str(ROOT / "build" / "fuzz" / "corpus" / target)]
    os.makedirs(dirs[0], exist_ok=True)
    crashes = ROOT / "build" / "fuzz" / "crashes"
    crashes.mkdir(parents=True, exist_ok=True)
    defaults = [f"-artifact_prefix={crashes}/{target}-", "-timeout=20",
                f"-max_len={max(p.stat().st_size for p in (seeds / target).iterdir()) * 2}"]
    given = {f.split("=")[0] for f in flags}
    flags += [d for d in defaults if d.split("=")[0] not in given]

    ws = Workspace(companions(target, seeds))
    cap = _vm_bytes() + HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    atheris.Setup([argv[0], *flags, *dirs, str(seeds / target)], lambda data: check(target, data, ws))
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
