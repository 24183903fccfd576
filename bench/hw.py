"""Hardware ceilings: DRAM streaming read bandwidth and int8 multiply-accumulate peaks.

The measuring loops live in hw.cpp, compiled here with g++ at bench time (bench tools are not
shipped, so -mavx2 and friends are fine; each ISA loop is still gated by cpuid at run time).

    python -m bench.hw [--quick]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE.parent / ".models" / "bench-bin"
SOURCE = HERE / "hw.cpp"


def _binary() -> Path:
    src = SOURCE.read_bytes()
    exe = CACHE / f"hw-{hashlib.sha256(src).hexdigest()[:12]}"
    if not exe.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = exe.with_suffix(".tmp")
        subprocess.run(["g++", "-O3", "-std=c++17", "-pthread", str(SOURCE), "-o", str(tmp)],
                       check=True)
        tmp.rename(exe)
    return exe


def measure(threads: tuple[int, ...] = (1, 2), buffer_mib: int = 1024, passes: int = 8,
            peak_seconds: float = 0.3) -> dict:
    """Raw samples: bandwidth in bytes/s per pass and int8 MAC/s per repeat, by thread count."""
    out = subprocess.run([str(_binary()), str(buffer_mib), str(passes), str(peak_seconds),
                          *map(str, threads)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def merge(*raws: dict) -> dict:
    """The samples of several ``measure`` runs as one (lists concatenated)."""
    out = {"bandwidth_bytes_per_s": {}, "int8_macs_per_s": {}}
    for raw in raws:
        for t, v in raw["bandwidth_bytes_per_s"].items():
            out["bandwidth_bytes_per_s"].setdefault(t, []).extend(v)
        for k, by_t in raw["int8_macs_per_s"].items():
            for t, v in by_t.items():
                out["int8_macs_per_s"].setdefault(k, {}).setdefault(t, []).extend(v)
    return out


def bandwidth(threads: int, buffer_mib: int = 1024, passes: int = 3) -> list[float]:
    """DRAM read bytes/s per pass, bandwidth only (a few tenths of a second)."""
    return measure((threads,), buffer_mib, passes, 0)["bandwidth_bytes_per_s"][str(threads)]


def summarize(raw: dict) -> dict:
    """Best-of for ceilings: a ceiling is what the machine can do, so noise only lowers it."""
    bw = {t: max(v) for t, v in raw["bandwidth_bytes_per_s"].items()}
    peaks = {k: {t: max(v) for t, v in by_t.items()} for k, by_t in raw["int8_macs_per_s"].items()}
    return {"bandwidth_bytes_per_s": bw, "int8_macs_per_s": peaks,
            "bandwidth_median_bytes_per_s": {t: statistics.median(v)
                                             for t, v in raw["bandwidth_bytes_per_s"].items()}}


def machine() -> dict:
    """CPU model, flags and core counts from /proc/cpuinfo (Linux)."""
    info: dict = {"platform": platform.platform(), "logical_cpus": os.cpu_count(),
                  "affinity_cpus": len(os.sched_getaffinity(0))}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return info
    first = text.split("\n\n", 1)[0]
    fields = dict((k.strip(), v.strip()) for k, _, v in
                  (line.partition(":") for line in first.splitlines()) if k.strip())
    info["cpu_model"] = fields.get("model name", "")
    info["cpu_family"] = fields.get("cpu family", "")
    info["cpu_model_id"] = fields.get("model", "")
    info["flags"] = fields.get("flags", "").split()
    cores = {(m.group(1), m.group(2)) for m in
             re.finditer(r"physical id\s*:\s*(\d+).*?core id\s*:\s*(\d+)", text, re.S)}
    info["physical_cores"] = len(cores) or None
    return info


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller buffer, fewer passes")
    args = ap.parse_args(argv)
    raw = measure(buffer_mib=1024, passes=3 if args.quick else 8,
                  peak_seconds=0.1 if args.quick else 0.3)
    s = summarize(raw)
    print(f"{machine().get('cpu_model', '?')}")
    for t, v in s["bandwidth_bytes_per_s"].items():
        print(f"DRAM read, {t} thread(s): {v / 1e9:6.1f} GB/s (best), "
              f"{s['bandwidth_median_bytes_per_s'][t] / 1e9:6.1f} GB/s (median)")
    for k, by_t in s["int8_macs_per_s"].items():
        print(f"{k:26s} " + "  ".join(f"{t} thr: {v / 1e9:6.1f} G MAC/s" for t, v in by_t.items()))


if __name__ == "__main__":
    sys.exit(main())
