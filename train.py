"""Extract emotion vectors from a causal LM at every layer and measure their geometry.

    python train.py                       # SmolLM2 (embedded) on the bundled corpus
    python train.py model=apertus trainer=gpu
    python train.py -m probe.lr=1e-3,1e-2 # a sweep; captured features are reused
"""

import hydra
from omegaconf import DictConfig

from emovec.cli import run_entry


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from emovec.pipeline import run_train

    summary = run_entry(run_train, cfg)
    # Returned for Hydra sweepers (e.g. Optuna) that optimise the job's return value.
    return summary["best"]["pc1_valence_r"]["value"] if summary else None


if __name__ == "__main__":
    main()
