"""Linear probes on all layers at once: planted signal, equivalence with one layer, metrics, splits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors import safe_open
from sklearn.metrics import accuracy_score, f1_score, r2_score, top_k_accuracy_score

from emovec import probes
from emovec.errors import EmovecError
from emovec.probes import METRIC_COLUMNS, fit_probes, save_probes, split_stories

NUM_EMOTIONS, PER_EMOTION, HIDDEN = 6, 20, 16
CFG = {"lr": 3e-2, "weight_decay": 0.01, "epochs": 25, "batch_size": 16, "val_fraction": 0.25}


def planted(seed: int = 0) -> dict:
    """Layer 0: noise. Layer 1: weak signal. Layer 2: emotion clusters, valence and arousal linear."""
    gen = torch.Generator().manual_seed(seed)
    emotion = torch.arange(NUM_EMOTIONS).repeat_interleave(PER_EMOTION)
    n = len(emotion)
    valence_of = torch.linspace(-1, 1, NUM_EMOTIONS)
    arousal_of = torch.rand(NUM_EMOTIONS, generator=gen) * 2 - 1
    centres = torch.randn(NUM_EMOTIONS, HIDDEN, generator=gen) * 3
    signal = centres[emotion]
    signal[:, 0] += 4 * valence_of[emotion]
    signal[:, 1] += 4 * arousal_of[emotion]
    noise = torch.randn(n, 3, HIDDEN, generator=gen)
    features = noise + torch.stack([torch.zeros_like(signal), 0.2 * signal, signal], dim=1)
    features = features * 5 + 2  # unstandardised scale and offset: the probe must standardise
    topics = [f"topic{i % 8}" for i in range(n)]
    return {"features": features, "emotion_ids": emotion, "valence": valence_of[emotion],
            "arousal": arousal_of[emotion], "topics": topics}


def fit(data: dict, cfg: dict | None = None, layers=(0, 1, 2), seed: int = 0, **kwargs):
    return fit_probes(data["features"], data["emotion_ids"], data["valence"], data["arousal"],
                      list(layers), NUM_EMOTIONS, {**CFG, **(cfg or {})}, seed, **kwargs)


@pytest.fixture(scope="module")
def data() -> dict:
    return planted()


@pytest.fixture(scope="module")
def result(data):
    return fit(data, layers=(0, 4, 9))


def test_planted_signal_is_found_at_its_layer_only(result):
    m = result.metrics.set_index("layer")
    assert list(m.index) == [0, 4, 9]
    assert m.loc[9, "probe_acc"] >= 0.9
    assert m.loc[0, "probe_acc"] <= 0.45  # chance is 1/6; a probe on noise must stay near it
    assert m.loc[9, "probe_valence_r2"] >= 0.8 and m.loc[9, "probe_arousal_r2"] >= 0.8
    assert m.loc[0, "probe_valence_r2"] <= 0.3
    # shuffled labels carry no signal even where the real probe is near perfect
    assert m.loc[9, "probe_chance_acc"] <= 0.45
    assert m.loc[9, "probe_chance_valence_r2"] <= 0.3
    assert result.info["n_train"] + result.info["n_val"] == NUM_EMOTIONS * PER_EMOTION
    assert result.info["epochs"] == CFG["epochs"]


def test_all_layers_at_once_equal_one_layer_alone(data, result):
    alone = fit_probes(data["features"][:, 2:3], data["emotion_ids"], data["valence"],
                       data["arousal"], [9], NUM_EMOTIONS, CFG, 0)
    for name in ("emotion_weight", "emotion_bias", "regression_weight", "regression_bias",
                 "feature_mean", "feature_std"):
        torch.testing.assert_close(result.tensors[name][2], alone.tensors[name][0],
                                   rtol=1e-4, atol=1e-5, msg=name)
    together = result.metrics.iloc[[2]].reset_index(drop=True)
    pd.testing.assert_frame_equal(together, alone.metrics, atol=1e-4, rtol=1e-4)


def test_metrics_match_an_independent_computation(result):
    p = result.predictions
    y = p["emotion"].numpy()
    for i, layer in enumerate([0, 4, 9]):
        row = result.metrics.iloc[i]
        assert row["layer"] == layer
        logits = p["emotion_logits"][:, i].numpy()
        assert row["probe_acc"] == pytest.approx(accuracy_score(y, logits.argmax(1)), abs=1e-6)
        assert row["probe_f1"] == pytest.approx(f1_score(y, logits.argmax(1), average="macro"),
                                                abs=1e-5)
        assert row["probe_top5"] == pytest.approx(
            top_k_accuracy_score(y, logits, k=5, labels=range(NUM_EMOTIONS)), abs=1e-6)
        chance = p["chance_emotion_logits"][:, i].numpy().argmax(1)
        assert row["probe_chance_acc"] == pytest.approx(accuracy_score(y, chance), abs=1e-6)
        for j, name in enumerate(("valence", "arousal")):
            truth, pred = p[name].numpy(), p["regression"][:, i, j].numpy()
            assert row[f"probe_{name}_r2"] == pytest.approx(r2_score(truth, pred), abs=1e-4)
            assert row[f"probe_{name}_r"] == pytest.approx(np.corrcoef(truth, pred)[0, 1], abs=1e-4)
        assert row["probe_chance_valence_r2"] == pytest.approx(
            r2_score(p["valence"].numpy(), p["chance_regression"][:, i, 0].numpy()), abs=1e-4)


def test_standardisation_uses_the_training_split_only(data, result):
    val = result.predictions["val_index"]
    train = torch.tensor(sorted(set(range(len(data["emotion_ids"]))) - set(val.tolist())))
    expected = data["features"][train].mean(dim=0)
    torch.testing.assert_close(result.tensors["feature_mean"], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(result.tensors["feature_mean"], data["features"].mean(dim=0),
                              atol=1e-3)


def test_same_seed_same_metrics_other_seed_other_split(data, result):
    again = fit(data, layers=(0, 4, 9))
    pd.testing.assert_frame_equal(result.metrics, again.metrics)
    other = fit(data, {"epochs": 1}, layers=(0, 4, 9), seed=1)
    assert not torch.equal(result.predictions["val_index"], other.predictions["val_index"])


def test_stratified_split_keeps_every_emotion_in_train():
    emotion = torch.arange(40).repeat_interleave(torch.tensor([2, 3, 5, 7] * 10))
    for seed in range(5):
        train, val = split_stories(emotion, 0.5, seed)
        assert set(emotion[train].tolist()) == set(range(40))
        assert len(set(train.tolist()) & set(val.tolist())) == 0
        assert len(train) + len(val) == len(emotion)
        assert len(val) == round(0.5 * len(emotion))


def test_split_with_fewer_held_out_stories_than_emotions():
    """171 emotions x 3 stories (the smoke run) still splits: some emotions have no val story."""
    emotion = torch.arange(171).repeat_interleave(3)
    train, val = split_stories(emotion, 0.2, 0)
    assert len(val) == round(0.2 * len(emotion)) < 171
    assert set(emotion[train].tolist()) == set(range(171))
    assert np.bincount(emotion[val].numpy(), minlength=171).max() == 1  # spread, not piled up
    again, _ = split_stories(emotion, 0.2, 0)
    assert torch.equal(train, again)


def test_grouped_split_puts_no_topic_on_both_sides(data):
    topics = np.array(data["topics"])
    train, val = split_stories(data["emotion_ids"], 0.25, 0, groups=list(topics))
    assert set(topics[train.numpy()]).isdisjoint(topics[val.numpy()])
    assert set(data["emotion_ids"][train].tolist()) == set(range(NUM_EMOTIONS))
    res = fit(data, {"group_by_topic": True, "epochs": 2}, groups=data["topics"])
    held_out = set(res.predictions["val_index"].tolist())
    train_topics = {t for i, t in enumerate(topics) if i not in held_out}
    assert train_topics.isdisjoint(topics[sorted(held_out)])
    assert res.info["grouped_by_topic"] is True


def test_ungrouped_fit_ignores_topics(data):
    """Topics passed with group_by_topic=false change nothing."""
    with_topics = fit(data, {"epochs": 2}, groups=data["topics"])
    without = fit(data, {"epochs": 2})
    assert torch.equal(with_topics.predictions["val_index"], without.predictions["val_index"])


def test_selected_targets_only(data):
    emotion_only = fit(data, {"targets": ["emotion"], "epochs": 3, "chance_baseline": False})
    m = emotion_only.metrics
    assert m[["probe_valence_r2", "probe_arousal_r", "probe_chance_acc"]].isna().all().all()
    assert m["probe_acc"].notna().all()
    assert "regression_weight" not in emotion_only.tensors
    valence_only = fit(data, {"targets": ["valence"], "epochs": 3})
    m = valence_only.metrics
    assert m[["probe_acc", "probe_f1", "probe_arousal_r2"]].isna().all().all()
    assert m["probe_valence_r2"].notna().all() and m["probe_chance_valence_r2"].notna().all()
    assert valence_only.tensors["regression_weight"].shape == (3, HIDDEN, 1)
    assert list(m.columns) == ["layer", *METRIC_COLUMNS]


def test_save_probes_round_trip(tmp_path, result):
    path = tmp_path / "probes.safetensors"
    save_probes(result, path, {"model": "tiny", "emotions": json.dumps(["a", "b"])})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert meta["model"] == "tiny" and json.loads(meta["layers"]) == [0, 4, 9]
        assert json.loads(meta["targets"]) == ["emotion", "valence", "arousal"]
        assert f.get_tensor("emotion_weight").shape == (3, HIDDEN, NUM_EMOTIONS)
        torch.testing.assert_close(f.get_tensor("feature_std"), result.tensors["feature_std"])
    assert [p.name for p in tmp_path.iterdir()] == ["probes.safetensors"]
    with pytest.raises(EmovecError, match="must be strings.*layers"):
        save_probes(result, tmp_path / "bad.safetensors", {"layers": [0, 4, 9]})


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(valence=d["valence"][:-1]), r"features has 120, valence has 119"),
    (lambda d: d.update(emotion_ids=d["emotion_ids"][:-2]), r"emotion_ids has 118"),
    (lambda d: d.update(topics=d["topics"][:3]), r"groups has 3"),
    (lambda d: d["features"].__setitem__((0, 1, 0), float("nan")), r"non-finite.*layer\(s\) \[1\]"),
    (lambda d: d["emotion_ids"].__setitem__(0, 99), r"emotion ids must lie in \[0, 6\)"),
])
def test_bad_input_is_reported(data, change, message):
    broken = {k: (v.clone() if torch.is_tensor(v) else list(v)) for k, v in data.items()}
    change(broken)
    with pytest.raises(EmovecError, match=message):
        fit(broken, groups=broken["topics"])


def test_an_emotion_with_one_story_is_named(data):
    keep = torch.ones(len(data["emotion_ids"]), dtype=torch.bool)
    keep[(data["emotion_ids"] == 3).nonzero().flatten()[1:]] = False
    broken = {k: (v[keep] if torch.is_tensor(v) else v) for k, v in data.items()}
    names = ["joyful", "calm", "angry", "wistful", "proud", "bored"]
    with pytest.raises(EmovecError, match=r"emotion 'wistful' has only 1 story"):
        fit(broken, emotion_names=names)
    with pytest.raises(EmovecError, match=r"emotion id 3 has only 1 story"):
        fit(broken)


@pytest.mark.parametrize("cfg, message", [
    ({"targets": ["emotion", "joy"]}, "probe.targets"),
    ({"val_fraction": 0.9}, "probe.val_fraction"),
    ({"group_by_topic": True}, "group_by_topic=true needs a topic"),
])
def test_bad_settings_are_reported(data, cfg, message):
    with pytest.raises(EmovecError, match=message):
        fit(data, cfg)


def test_grouping_that_cannot_keep_an_emotion_in_train_is_reported(data):
    # every story of emotion 0 shares one topic, and there are only two topics: some fold must
    # hold that topic out, and with 2 folds either choice drops an emotion from training
    topics = ["a" if e in (0, 1, 2) else "b" for e in data["emotion_ids"].tolist()]
    with pytest.raises(EmovecError, match="keeps every emotion in training"):
        split_stories(data["emotion_ids"], 0.5, 0, groups=topics)


QUIET_SCRIPT = """
import torch
from emovec.probes import fit_probes
emotion = torch.arange(6).repeat_interleave(4)
features = torch.randn(len(emotion), 2, 4)
fit_probes(features, emotion, torch.rand(24), torch.rand(24), [0, 1], 6, {"epochs": 1}, 0)
"""


def test_fit_is_quiet():
    """No Lightning banners, hints or progress bars: the pipeline reports the results itself.

    A subprocess, because pytest would capture (and so hide) Lightning's logging and warnings.
    """
    src = str(Path(probes.__file__).resolve().parents[1])  # the emovec under test
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", QUIET_SCRIPT], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == "" and proc.stderr == ""


def test_linear_config_states_the_code_defaults():
    """conf/probe/linear.yaml is what sweeps see; it must not drift from what cfg.get falls back to."""
    import yaml

    conf = Path(__file__).resolve().parents[1] / "conf" / "probe"
    linear = yaml.safe_load((conf / "linear.yaml").read_text())
    assert {k: linear[k] for k in probes.DEFAULTS} == probes.DEFAULTS
    assert linear["name"] == "linear" and linear["enabled"] is True
    assert yaml.safe_load((conf / "none.yaml").read_text()) == {"name": "none", "enabled": False}
