"""Generate an emotion story corpus (or neutral dialogues) with a chat model: see conf/generate.yaml."""

import sys

import hydra
from omegaconf import DictConfig

from emovec.errors import EmovecError
from emovec.generation import run


@hydra.main(version_base="1.3", config_path="conf", config_name="generate")
def main(cfg: DictConfig) -> None:
    try:
        report = run(cfg)
    except EmovecError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(f"{report.output}: {report.rows_written} new rows from {report.units_run} prompts "
          f"({report.units_skipped} already done); dropped: {dict(report.dropped) or 'none'}")


if __name__ == "__main__":
    main()
