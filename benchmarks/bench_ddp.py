"""Capture tokens/s with 1 and 2 CPU processes (DDP, gloo), on the tiny and the embedded model.

    python benchmarks/bench_ddp.py [--stories-per-emotion 1]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _runs import train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stories-per-emotion", type=int, default=1)
    args = parser.parse_args()
    print(f"\n== DDP capture on CPU, {args.stories_per_emotion} story an emotion, all layers ==")
    for model in ("tiny", "smollm2"):
        rates = {}
        for devices in (1, 2):
            cache = Path(tempfile.mkdtemp(prefix="emovec-bench-cache-"))
            overrides = [f"model={model}", "logger=none", "probe=none", "dataset.max_neutral=16",
                         f"dataset.max_stories_per_emotion={args.stories_per_emotion}", "trainer.accelerator=cpu",
                         f"trainer.devices={devices}", f"trainer.strategy={'ddp' if devices > 1 else 'auto'}"]
            if model == "tiny":
                overrides.append("extract.token_offset=8")
            _, summary = train(overrides, cache)
            rates[devices] = summary["timings"]["capture_tokens_per_s"]
            print(f"  {model:8s} {devices} process(es): {rates[devices]:8.0f} tokens/s")
        print(f"  {model:8s} scaling 2 / 1 processes: {rates[2] / rates[1]:.2f} (2 cores shared by both)")


if __name__ == "__main__":
    main()
