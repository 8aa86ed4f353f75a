"""The train job end to end on a tiny model: outputs, W&B offline run, the cache, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors import safe_open

import emovec.pipeline as pipeline
from emovec.errors import EmovecError
from emovec.norms import load_emotions
from tests.conftest import TINY_STORIES, compose, run_cli, tiny_overrides

PROMISED = ["layers.csv", "summary.json", "vectors.safetensors", "norms.csv", "layer_curves.png"]


def run(overrides: list[str], run_dir: Path) -> dict:
    return pipeline.run_train(compose(overrides), run_dir)


def test_cli_writes_every_promised_file_and_an_offline_wandb_run(tiny_corpus, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("train.py", tiny_overrides(tiny_corpus, f"hydra.run.dir={run_dir}", "probe.epochs=3"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "PC1-valence r =" in proc.stdout
    for name in PROMISED + ["probes.safetensors", "probe_curves.png", ".hydra/config.yaml"]:
        assert (run_dir / name).stat().st_size > 0, name
    summary = json.loads((run_dir / "summary.json").read_text())
    table = pd.read_csv(run_dir / "layers.csv")
    assert table["layer"].tolist() == list(range(summary["num_layers"] + 1)) == summary["layers"]
    for column in ("pc1_valence_r", "pc1_valence_spearman", "pc2_arousal_r", "pc1_var", "pc2_var", "denoise_k",
                   "probe_acc", "probe_valence_r2", "probe_arousal_r2"):
        assert column in table and table[column].notna().all(), column
    best = summary["best"]["pc1_valence_r"]
    assert best["value"] == pytest.approx(table["pc1_valence_r"].max())
    assert summary["counts"] == {"stories": 16, "stories_used": 16, "stories_dropped": 0, "emotions": 8,
                                 "neutral_texts": 6, "emotions_without_norms": []}
    with safe_open(str(run_dir / "vectors.safetensors"), "pt") as fh:
        meta = fh.metadata()
        # Row order follows the norms' list (the paper's order), not the corpus file's.
        order = load_emotions()
        assert json.loads(meta["emotions"]) == sorted(TINY_STORIES, key=order.index)
        assert fh.get_tensor("vectors").shape == (5, 8, 64)
    wandb = summary["wandb"]
    assert wandb["mode"] == "offline" and wandb["run_id"]
    offline = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    assert list(offline[0].glob("run-*.wandb"))
    assert list(offline[0].glob("files/media/table/layers_*.table.json"))
    assert list(offline[0].glob("files/media/images/figures/layer_curves_*.png"))


def test_second_run_reuses_features_without_the_model(tiny_corpus, tmp_path, monkeypatch):
    first = run(tiny_overrides(tiny_corpus, "logger=none", "probe=none"), tmp_path / "a")
    assert first["model_loaded"]

    def refuse(*_a, **_k):
        raise AssertionError("the model was loaded although the features are cached")

    monkeypatch.setattr(pipeline, "load_model", refuse)
    # Later stages (pooling, denoising, probes) change; the capture does not.
    second = run(tiny_overrides(tiny_corpus, "logger=none", "extract.pooling=token_weighted",
                                "extract.denoise.variance=0.3", "probe.epochs=2"), tmp_path / "b")
    assert not second["model_loaded"] and second["feature_store"] == first["feature_store"]
    third = run(tiny_overrides(tiny_corpus, "logger=none", "probe=none"), tmp_path / "c")
    a = pd.read_csv(tmp_path / "a" / "layers.csv")
    c = pd.read_csv(tmp_path / "c" / "layers.csv")
    pd.testing.assert_frame_equal(a, c)
    assert third["best"] == first["best"]


def test_same_seed_same_vectors(tiny_corpus, tmp_path):
    from safetensors.torch import load_file

    run(tiny_overrides(tiny_corpus, "logger=none", "probe=none", "recapture=true"), tmp_path / "a")
    run(tiny_overrides(tiny_corpus, "logger=none", "probe=none", "recapture=true"), tmp_path / "b")
    a, b = load_file(str(tmp_path / "a" / "vectors.safetensors")), load_file(str(tmp_path / "b" / "vectors.safetensors"))
    assert np.array_equal(a["vectors"].numpy(), b["vectors"].numpy())


def _expect_failure(overrides, run_dir, match):
    with pytest.raises(EmovecError, match=match):
        run(overrides, run_dir)
    assert not (run_dir / "summary.json").exists()


def test_malformed_line_names_file_and_line(tiny_corpus, tmp_path):
    path = tiny_corpus["stories"]
    path.write_text(path.read_text() + '{"emotion": "sad", "text": \n')
    _expect_failure(tiny_overrides(tiny_corpus, "logger=none"), tmp_path / "r", rf"{path}:9: not valid JSON")


def test_emotion_missing_from_norms_is_named(tiny_corpus, tmp_path):
    path = tiny_corpus["stories"]
    path.write_text(path.read_text() + json.dumps({"emotion": "flabbergasted", "text": "He could not speak."}) + "\n")
    _expect_failure(tiny_overrides(tiny_corpus, "logger=none"), tmp_path / "r", "flabbergasted")


def test_emotion_with_no_story_past_the_offset_fails(tiny_corpus, tmp_path):
    path = tiny_corpus["stories"]
    path.write_text(path.read_text() + json.dumps({"emotion": "tired", "text": "Yawn."}) + "\n")
    _expect_failure(tiny_overrides(tiny_corpus, "logger=none", "extract.token_offset=10"), tmp_path / "r",
                    "no usable story .* tired")


def test_short_stories_are_dropped_and_counted(tiny_corpus, tmp_path):
    path = tiny_corpus["stories"]
    path.write_text(path.read_text() + json.dumps({"emotion": "sad", "text": "Oh."}) + "\n")
    summary = run(tiny_overrides(tiny_corpus, "logger=none", "probe=none", "extract.token_offset=10"), tmp_path / "r")
    assert summary["counts"]["stories_dropped"] == 1 and summary["counts"]["stories_used"] == 16


def test_missing_files_and_models(tiny_corpus, tmp_path):
    _expect_failure(tiny_overrides(tiny_corpus, "logger=none", "dataset.path=/nonexistent/stories.jsonl"),
                    tmp_path / "a", "/nonexistent/stories.jsonl: file not found")
    _expect_failure(tiny_overrides(tiny_corpus, "logger=none", "dataset.neutral_path=/nope.jsonl"),
                    tmp_path / "b", "/nope.jsonl: file not found")
    overrides = [o for o in tiny_overrides(tiny_corpus, "logger=none") if not o.startswith("model=")]
    _expect_failure(overrides + ["model=hf", "model.name_or_path=/nonexistent/model"], tmp_path / "c",
                    "cannot load model '/nonexistent/model'")


def test_non_finite_activations_are_reported(tiny_corpus, tmp_path, monkeypatch):
    real = pipeline.load_model

    def poisoned(cfg, accelerator="cpu"):
        loaded = real(cfg, accelerator)
        with __import__("torch").no_grad():
            loaded.layers[1].mlp.down_proj.weight.fill_(float("nan"))
        return loaded

    monkeypatch.setattr(pipeline, "load_model", poisoned)
    _expect_failure(tiny_overrides(tiny_corpus, "logger=none"), tmp_path / "r", "non-finite activations .* layer 2")


def test_cli_bad_input_exits_non_zero_with_one_line(tiny_corpus, tmp_path):
    proc = run_cli("train.py", tiny_overrides(tiny_corpus, "logger=none", "dataset.path=/missing.jsonl",
                                              f"hydra.run.dir={tmp_path / 'r'}"))
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == "error: /missing.jsonl: file not found"
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r" / "summary.json").exists()
