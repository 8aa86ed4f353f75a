"""`make bench`: every benchmark, each printing its figures measured side by side in one run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHES = [
    ["bench_capture.py", "--stories", "96"],
    ["bench_probes.py"],
    ["bench_sweep.py"],
    ["bench_ddp.py"],
]

if __name__ == "__main__":
    failed = 0
    for bench in BENCHES:
        print(f"\n### {' '.join(bench)}", flush=True)
        failed += subprocess.run([sys.executable, str(HERE / bench[0]), *bench[1:]]).returncode != 0
    print("\nGPU figures (a lent GPU only): PYTHONPATH=src python benchmarks/bench_gpu.py")
    sys.exit(1 if failed else 0)
