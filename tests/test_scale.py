"""Scale-out pieces on CPU: the papers' architectures end to end, a split device map, PEFT adapters."""

from __future__ import annotations

import json

import pytest
import torch

import emovec.pipeline as pipeline
from emovec.models import build_tiny_model, build_tiny_tokenizer, load_model, load_tokenizer
from tests.conftest import compose, tiny_overrides
from tests.test_capture import TEXTS, capture


@pytest.mark.parametrize("arch", ["apertus", "gemma4"])
def test_papers_architectures_run_end_to_end(arch, tiny_corpus, tmp_path):
    cfg = compose(tiny_overrides(tiny_corpus, f"model.arch={arch}", "logger=none", "probe.epochs=2"))
    summary = pipeline.run_train(cfg, tmp_path / "run")
    assert summary["num_layers"] == 4 and summary["hidden_size"] == 64
    assert summary["counts"]["stories_used"] == 16
    assert (tmp_path / "run" / "probes.safetensors").exists()


def test_gemma4_multimodal_wrapper_nests_the_text_decoder():
    loaded = build_tiny_model("gemma4")
    assert type(loaded.model).__name__ == "Gemma4ForConditionalGeneration"
    assert loaded.layers is loaded.model.model.language_model.layers
    assert loaded.hidden_size == loaded.model.config.text_config.hidden_size
    text = loaded.model.config.text_config
    assert text.num_kv_shared_layers > 0 and text.hidden_size_per_layer_input > 0


def test_tokenizer_config_with_a_list_of_extra_special_tokens_loads(tmp_path):
    build_tiny_tokenizer().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["extra_special_tokens"] = ["<start_of_image>", "<end_of_image>"]  # as Gemma 4 ships it
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_tokenizer(str(tmp_path))("a b").input_ids


def test_split_device_map_gives_the_same_features(tmp_path):
    """Half the blocks offloaded to disk (accelerate moves them in on the fly): hooks still pool
    each block's output, and the features equal the plain model's."""
    plain = build_tiny_model("llama", layers=4)
    plain.model.save_pretrained(tmp_path / "m")
    plain.tokenizer.save_pretrained(tmp_path / "m")
    device_map = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                  "model.layers.1": "cpu", "model.layers.2": "disk", "model.layers.3": "disk",
                  "model.norm": "cpu", "lm_head": "cpu"}
    split = load_model({"name": "hf", "name_or_path": str(tmp_path / "m"), "dtype": "float32",
                        "device_map": device_map, "offload_folder": str(tmp_path / "offload")})
    assert set(split.model.hf_device_map.values()) == {"cpu", "disk"}
    a = capture(plain, TEXTS, 2, tmp_path, tag="plain")
    b = capture(split, TEXTS, 2, tmp_path, tag="split")
    torch.testing.assert_close(a.mean, b.mean, atol=1e-5, rtol=1e-5)


def _lora_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    base = build_tiny_model("llama")
    peft_model = get_peft_model(base.model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    return tmp_path / "adapter"


def test_adapter_changes_features_and_merging_keeps_them(tmp_path):
    adapter = _lora_adapter(tmp_path)
    cfg = {"name": "tiny", "arch": "llama", "dtype": "float32"}
    base = capture(load_model(cfg), TEXTS, 1, tmp_path, tag="base")
    unmerged = capture(load_model({**cfg, "adapter": str(adapter)}), TEXTS, 1, tmp_path, tag="lora")
    merged = capture(load_model({**cfg, "adapter": str(adapter), "merge_adapter": True}), TEXTS, 1, tmp_path, tag="m")
    assert not torch.allclose(base.mean[:, 1:], unmerged.mean[:, 1:], atol=1e-4)
    torch.testing.assert_close(base.mean[:, 0], unmerged.mean[:, 0])  # embeddings untouched by q/v LoRA
    torch.testing.assert_close(unmerged.mean, merged.mean, atol=1e-5, rtol=1e-5)


def test_missing_adapter_is_a_clear_error(tmp_path):
    from emovec.errors import EmovecError

    with pytest.raises(EmovecError, match="model.adapter="):
        load_model({"name": "tiny", "adapter": str(tmp_path / "nope")})
