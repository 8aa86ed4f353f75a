"""One probe-sweep point on cached features against a run that recaptures, side by side.

    python benchmarks/bench_sweep.py [--stories-per-emotion N]   (default: the whole bundled corpus)
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _runs import train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--stories-per-emotion", type=int, default=0, help="0: every story")
    args = parser.parse_args()
    cache = Path(tempfile.mkdtemp(prefix="emovec-bench-cache-"))
    base = [f"model={args.model}", "logger=none"]
    if args.stories_per_emotion:
        base.append(f"dataset.max_stories_per_emotion={args.stories_per_emotion}")
    recapture_s, first = train(base + ["probe.lr=3e-3", "recapture=true"], cache)
    cached_s, second = train(base + ["probe.lr=1e-2"], cache)
    assert first["model_loaded"] and not second["model_loaded"]
    print(f"\n== probe sweep point: {args.model}, {first['counts']['stories']} stories, wall time of train.py ==")
    print(f"  recapture     {recapture_s:7.1f} s  (capture {first['timings']['capture_s']:.1f} s)")
    print(f"  cached        {cached_s:7.1f} s  (model not loaded)")
    print(f"  recapture / cached (goal >= 20): {recapture_s / cached_s:.1f}")


if __name__ == "__main__":
    main()
