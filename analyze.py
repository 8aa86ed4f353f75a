"""Compare finished emovec runs: figures, CKA, logit lens, an HTML report and a W&B Report."""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from emovec.analysis import run_analysis
from emovec.errors import EmovecError


@hydra.main(version_base=None, config_path="conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    try:
        run_analysis(cfg, HydraConfig.get().runtime.output_dir)
    except EmovecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
