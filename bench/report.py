"""What every bench module's results file starts with, and where it goes:
``bench/results/<prefix>-<UTC start time>[-quick].json``."""
from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

from . import hw

__all__ = ["RESULTS", "header", "write"]

RESULTS = Path(__file__).resolve().parent / "results"


def header(module: str) -> dict:
    """Start time, the command that ran and the machine (its CPU flags left out)."""
    return {"started_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, "-m", module, *sys.argv[1:]]),
            "machine": {k: v for k, v in hw.machine().items() if k != "flags"}}


def write(report: dict, out: Path, prefix: str, quick: bool) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = out / f"{prefix}-{stamp}{'-quick' if quick else ''}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")
    return path
