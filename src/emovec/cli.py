"""What every entry point shares: logging, the run dir, and bad input as one line plus exit 1."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from emovec.errors import EmovecError

log = logging.getLogger("emovec")


def quiet_third_party() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", os.environ.get("HF_HUB_OFFLINE", "0"))
    for name in ("transformers", "lightning", "lightning.pytorch", "httpx", "urllib3"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*predict_dataloader.*")


def hydra_run_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def run_entry(job: Callable[[DictConfig, Path], Any], cfg: DictConfig) -> Any:
    """Run a job in the Hydra run dir; an EmovecError becomes `error: ...` on stderr and exit 1."""
    quiet_third_party()
    try:
        result = job(cfg, hydra_run_dir())
    except EmovecError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(1)
    if isinstance(result, dict) and "best" in result:
        _print_best(result)
    return result


def _print_best(summary: dict[str, Any]) -> None:
    best = summary["best"]["pc1_valence_r"]
    line = (f"best layer {best['layer']}/{summary['num_layers']}: PC1-valence r = {best['value']:.3f}")
    if "pc2_arousal_r" in summary["best"]:
        a = summary["best"]["pc2_arousal_r"]
        line += f"; best PC2-arousal r = {a['value']:.3f} at layer {a['layer']}"
    if "probe_acc" in summary["best"]:
        p = summary["best"]["probe_acc"]
        line += f"; probe accuracy {p['value']:.3f} at layer {p['layer']}"
    print(line, flush=True)
    print(f"run dir: {hydra_run_dir()}", flush=True)
