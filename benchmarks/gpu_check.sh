#!/usr/bin/env bash
# The GPU checks of the scale-out issue, as run on a lent GPU machine (see README, Benchmarks).
# Expects torch, transformers, lightning on the machine; hydra-core/omegaconf wheels in .whl/.
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:src
else
  export PYTHONPATH=src
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 EMOVEC_CACHE=/tmp/emovec-cache
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers, lightning; print(torch.__version__, transformers.__version__, lightning.__version__)"
# 1. Capture throughput and MFU on a random-weight model of Apertus-8B's size, bf16.
python3 benchmarks/bench_gpu.py --stories 512 --out "$OUT/gpu_bench.json" 2>&1 | grep -v Warning
# 2. The whole train job on GPU (tiny model, real pipeline), and the same on CPU: equal metrics.
for acc in gpu cpu; do
  python3 train.py model=tiny logger=none probe=none trainer=$acc dataset.max_stories_per_emotion=2 \
    extract.token_offset=8 hydra.run.dir="$OUT/tiny_$acc" 2>&1 | grep -E "best layer|error" ;
done
python3 - "$OUT" <<'PY'
import sys, pandas as pd
a, b = (pd.read_csv(f"{sys.argv[1]}/tiny_{x}/layers.csv") for x in ("gpu", "cpu"))
print("tiny gpu vs cpu, max |diff| pc1_valence_r:", float((a.pc1_valence_r - b.pc1_valence_r).abs().max()))
PY
GPUS=$(nvidia-smi -L | wc -l)
if [ "$GPUS" -ge 2 ]; then
  python3 -m pytest -q tests/test_ddp.py 2>&1 | tail -3
else
  echo "one GPU: the 2-process DDP equality runs on CPU (gloo) in tests/test_ddp.py"
fi
