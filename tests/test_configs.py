"""Every option of every config group composes with the train config."""

from __future__ import annotations

import pytest

from tests.conftest import CONF, compose

REQUIRED = {  # options whose ??? keys a user must fill
    ("model", "hf"): ["model.name_or_path=some/model"],
    ("dataset", "jsonl"): ["dataset.path=stories.jsonl"],
    ("norms", "csv"): ["norms.path=norms.csv"],
}
OPTIONS = [(group.name, option.stem) for group in sorted(CONF.iterdir()) if group.is_dir()
           for option in sorted(group.glob("*.yaml"))]


def test_defaults_match_the_cli_contract():
    cfg = compose([])
    assert (cfg.model.name, cfg.dataset.name, cfg.norms.name, cfg.logger.name) == ("smollm2", "bundled", "bundled", "wandb")
    assert cfg.extract.token_offset == 50 and cfg.extract.max_length == 512 and cfg.extract.layers == "all"
    assert cfg.extract.pooling == "story_mean" and cfg.extract.denoise.variance == 0.5


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes(group, option):
    key = f"{group}={option}"
    cfg = compose([key, *REQUIRED.get((group, option), [])])
    if group != "experiment":
        assert cfg[group] is not None
    from omegaconf import OmegaConf

    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_contract_overrides_compose():
    cfg = compose(["model=hf", "model.name_or_path=x", "model.adapter=/tmp/a", "model.dtype=bfloat16",
                   "extract.layers=[0,5]", "extract.pooling=token_weighted", "trainer.devices=2",
                   "trainer.strategy=ddp", "trainer.num_nodes=2", "seed=3", "logger=none"])
    assert cfg.model.adapter == "/tmp/a" and list(cfg.extract.layers) == [0, 5] and cfg.seed == 3
