"""Every W&B sweep file drives train.py with overrides that Hydra accepts and that land where meant."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))
COMMAND = ["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"]
DISTRIBUTIONS = {"constant", "categorical", "int_uniform", "uniform", "q_uniform", "log_uniform_values",
                 "q_log_uniform_values", "inv_log_uniform_values", "normal", "q_normal",
                 "log_normal", "q_log_normal", "beta", "q_beta"}
_ABSENT = object()


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def sample_values(spec: dict) -> list:
    """The values a sweep can send for one parameter: all listed ones, or a range's ends and middle."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    low, high = spec["min"], spec["max"]
    if spec["distribution"].startswith(("log_", "q_log_", "inv_log_")):
        return [low, math.sqrt(low * high), high]
    return [low, (low + high) / 2, high]


def compose_train(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def overrides_for(assignment: dict) -> list[str]:
    """Exactly the `key=value` strings the W&B agent puts in ${args_no_hyphens}."""
    args = {key: {"value": value} for key, value in assignment.items()}
    return create_sweep_command_args({"args": args})["args_no_hyphens"]


GRIDS = [path for path in SWEEPS if load(path)["method"] == "grid"]


@pytest.fixture(scope="module")
def base():
    return compose_train([])


def test_the_sweeps_the_issue_asks_for_exist():
    assert {p.stem for p in SWEEPS} >= {"probe_bayes", "extraction", "paper_2x2", "probe_grid_8"}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_file_is_a_wandb_sweep_of_train_py(path):
    sweep = load(path)
    assert sweep["program"] == "train.py" and (REPO / "train.py").is_file()
    assert sweep["command"] == COMMAND
    assert sweep["method"] in {"grid", "random", "bayes"}
    assert sweep["metric"]["goal"] in {"maximize", "minimize"}
    assert sweep["metric"]["name"].startswith("best/")
    for key, spec in sweep["parameters"].items():
        assert isinstance(spec, dict) and spec, key
        if sweep["method"] == "grid":
            assert "value" in spec or "values" in spec, f"{key}: grid needs listed values"
        if "distribution" in spec:
            assert spec["distribution"] in DISTRIBUTIONS, key
            assert all(isinstance(spec[k], (int, float)) for k in ("min", "max")), key
            assert spec["min"] < spec["max"], key
            if "log" in spec["distribution"]:
                assert spec["min"] > 0, key


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_parameter_is_a_config_key_and_every_value_composes(path, base):
    choices = base.hydra.runtime.choices
    for key, spec in load(path)["parameters"].items():
        is_group = key in choices
        assert is_group or OmegaConf.select(base, key, default=_ABSENT) is not _ABSENT, \
            f"{path.name}: {key} is not a key of the composed train config"
        for value in sample_values(spec):
            cfg = compose_train(overrides_for({key: value}))
            if is_group:
                assert cfg.hydra.runtime.choices[key] == value
                OmegaConf.to_container(cfg[key], resolve=True)  # its interpolations resolve
            else:
                assert OmegaConf.select(cfg, key) == value, f"{key}={value} did not land"


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.stem)
def test_grid_points_compose_together(path):
    """Parameters must also combine: each grid point composes as one command line."""
    sweep = load(path)
    keys = list(sweep["parameters"])
    grid = list(itertools.product(*(sample_values(sweep["parameters"][k]) for k in keys)))
    for point in grid:
        cfg = compose_train(overrides_for(dict(zip(keys, point))))
        assert cfg.hydra.runtime.choices["probe"] in {"linear", "none"}


def test_probe_grid_has_eight_points_on_the_embedded_default():
    sweep = load(REPO / "sweeps" / "probe_grid_8.yaml")
    sizes = [len(sample_values(spec)) for spec in sweep["parameters"].values()]
    assert math.prod(sizes) == 8
    cfg = compose_train(overrides_for({k: sample_values(v)[0] for k, v in sweep["parameters"].items()}))
    assert cfg.hydra.runtime.choices["model"] == "smollm2"
    # probe settings only: every point shares one capture
    assert all(k.startswith("probe.") or "value" in v for k, v in sweep["parameters"].items())


def test_paper_grid_is_two_models_by_two_corpora():
    params = load(REPO / "sweeps" / "paper_2x2.yaml")["parameters"]
    assert set(params["model"]["values"]) == {"apertus", "gemma4"}
    assert set(params["dataset"]["values"]) == {"apertus_stories", "gemma_stories"}


def test_a_wrong_key_or_value_is_caught(base):
    """The checks above can fail: an unknown key or an unknown group option does not compose."""
    with pytest.raises(ConfigCompositionException, match="probe.learning_rate"):
        compose_train(overrides_for({"probe.learning_rate": 0.1}))
    with pytest.raises(MissingConfigException, match="no_such_model"):
        compose_train(overrides_for({"model": "no_such_model"}))
    assert OmegaConf.select(base, "probe.learning_rate", default=_ABSENT) is _ABSENT
