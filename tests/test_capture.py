"""Capture: layer convention, padding side and token offset against an independent computation."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from emovec.capture import plan_batches, pooling_weights, resolve_layers, run_capture, tokenize_items
from emovec.errors import EmovecError
from emovec.models import build_tiny_model, find_decoder_layers
from emovec.pipeline import make_trainer
from emovec.store import FeatureStore

TEXTS = [
    "the quick brown fox jumps over the lazy dog while the rain falls",
    "she opened the letter",
    "he waited at the station for the train that was late again this morning and then",
    "a",
    "the rain falls on the quiet town she read it twice before she put it down",
]


def capture(loaded, texts, offset, tmp_path, layers="all", padding_side="right", batch_tokens=64, tag="a"):
    layer_list = resolve_layers(layers, loaded.num_layers)
    items = tokenize_items(loaded.tokenizer, texts, [offset] * len(texts), 512)
    store = FeatureStore(tmp_path / tag, "k")
    plan = store.begin({}, plan_batches([len(i.ids) for i in items], batch_tokens), len(items))
    run_capture(loaded, items, layer_list, store, plan, make_trainer({"accelerator": "cpu"}), padding_side)
    return store.assemble(layer_list, {"model": loaded.name, "num_layers": loaded.num_layers,
                                       "hidden_size": loaded.hidden_size})


def _set_final_norm_identity(model: nn.Module, norm: nn.Module) -> None:
    for module in model.modules():
        for child_name, child in module.named_children():
            if child is norm:
                setattr(module, child_name, nn.Identity())
                return
    raise AssertionError("final norm not found")


def reference_features(loaded, texts, offset):
    """Per text, alone and unpadded: output_hidden_states, with the final norm removed so the last
    entry is block L's raw output; mean over positions >= offset in numpy."""
    model = copy.deepcopy(loaded.model)
    _set_final_norm_identity(model, find_decoder_layers(model) and _final_norm(model, loaded))
    out = []
    for text in texts:
        ids = loaded.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hs = model(input_ids=ids, output_hidden_states=True).hidden_states
        # Gemma 3n keeps several altup streams, (4, B, T, H); the first is the residual stream.
        states = np.stack([(h[0] if h.dim() == 4 else h)[0].double().numpy() for h in hs])  # (L+1, T, H)
        sel = states[:, offset:] if ids.shape[1] > offset else states[:, :0]
        out.append(sel.mean(1) if sel.shape[1] else np.zeros(states[:, 0].shape))
    return np.stack(out)


def _final_norm(model, loaded):
    # the deep copy's module that corresponds to loaded.final_norm
    names = {id(m): n for n, m in loaded.model.named_modules()}
    target = names[id(loaded.final_norm)]
    return dict(model.named_modules())[target]


@pytest.mark.parametrize("arch", ["llama", "gemma3", "gemma3n", "gemma4", "apertus", "qwen2", "mistral", "gpt2"])
def test_hooked_features_match_hidden_states(arch, tmp_path):
    loaded = build_tiny_model(arch, layers=4)
    feats = capture(loaded, TEXTS, offset=3, tmp_path=tmp_path)
    ref = reference_features(loaded, TEXTS, offset=3)
    assert feats.layers == list(range(loaded.num_layers + 1))
    lengths = [len(loaded.tokenizer(t)["input_ids"]) for t in TEXTS]
    assert feats.count.tolist() == [max(0, n - 3) for n in lengths]
    np.testing.assert_allclose(feats.mean.double().numpy(), ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["llama", "gemma4"])
def test_left_and_right_padding_give_equal_features(arch, tmp_path):
    loaded = build_tiny_model(arch)
    right = capture(loaded, TEXTS, 2, tmp_path, padding_side="right", tag="r")
    left = capture(loaded, TEXTS, 2, tmp_path, padding_side="left", tag="l")
    assert right.count.tolist() == left.count.tolist()
    torch.testing.assert_close(left.mean, right.mean, atol=1e-5, rtol=1e-5)


def test_batching_does_not_change_features(tmp_path):
    loaded = build_tiny_model("gemma3")
    one_by_one = capture(loaded, TEXTS, 0, tmp_path, batch_tokens=1, tag="one")
    together = capture(loaded, TEXTS, 0, tmp_path, batch_tokens=10_000, tag="all")
    torch.testing.assert_close(one_by_one.mean, together.mean, atol=1e-5, rtol=1e-5)


def test_subset_of_layers_stops_early_and_matches_all(tmp_path):
    loaded = build_tiny_model("llama", layers=4)
    calls = []
    handle = loaded.layers[3].register_forward_hook(lambda *a: calls.append(1))
    part = capture(loaded, TEXTS, 1, tmp_path, layers=[0, 2], tag="part")
    handle.remove()
    full = capture(loaded, TEXTS, 1, tmp_path, tag="full")
    assert calls == [], "block 4 ran although layer 2 was the deepest requested"
    torch.testing.assert_close(part.mean, full.mean[:, [0, 2]])


def test_pooling_weights_count_from_the_mask():
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]])
    w = pooling_weights(mask, torch.tensor([2, 2]))
    assert w.tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 1]]


def test_plan_batches_respects_budget_and_covers_everything():
    lengths = [5, 50, 7, 30, 30, 2, 49]
    plan = plan_batches(lengths, batch_tokens=100)
    assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
    for batch in plan:
        assert len(batch) * max(lengths[i] for i in batch) <= 100 or len(batch) == 1
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)


def test_resolve_layers():
    assert resolve_layers("all", 3) == [0, 1, 2, 3]
    assert resolve_layers([-1, 0], 3) == [0, 3]
    with pytest.raises(EmovecError, match="outside 0..3"):
        resolve_layers([7], 3)


def test_unknown_architecture_names_the_model():
    class Odd(nn.Module):
        pass

    with pytest.raises(EmovecError, match="Odd"):
        find_decoder_layers(Odd())
