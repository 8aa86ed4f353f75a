"""Run train.py as a user would and read its summary: shared by the benchmarks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train(overrides: list[str], cache: Path, env: dict[str, str] | None = None) -> tuple[float, dict]:
    """Wall seconds of one `python train.py ...` and its summary.json."""
    run_dir = Path(tempfile.mkdtemp(prefix="emovec-bench-"))
    full_env = dict(os.environ, EMOVEC_CACHE=str(cache), WANDB_MODE="offline", **(env or {}))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), f"hydra.run.dir={run_dir}", *overrides],
                          cwd=REPO, env=full_env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"train.py {' '.join(overrides)} failed:\n{proc.stderr[-3000:]}")
    return seconds, json.loads((run_dir / "summary.json").read_text())
