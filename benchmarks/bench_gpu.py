"""GPU capture throughput on a random-weight model of Apertus-8B's real size, in bf16.

Measures, on the same length-sorted batches: emovec's capture (hooks on all 33 layers, pooled
in fp32 inside the hooks, through Trainer.predict), a bare decoder forward with no hooks, and the
common recipe (full model with LM head, output_hidden_states=True, batch of 4). Reports tokens/s,
model FLOP utilisation (forward FLOPs / elapsed / peak bf16 dense FLOP/s), and peak GPU memory.

    python benchmarks/bench_gpu.py [--stories 512] [--tokens 400] [--peak-tflops 989]

Only needs torch, transformers, lightning and safetensors (no Hydra, no W&B), so it runs on a
bare GPU machine with PYTHONPATH=src.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch


def apertus_8b_config():
    import transformers as tf

    # Apertus-8B-Instruct-2509: 32 blocks, width 4096, 32 query / 8 KV heads, xIELU MLP, vocab 131k.
    return tf.ApertusConfig(hidden_size=4096, intermediate_size=21504, num_hidden_layers=32,
                            num_attention_heads=32, num_key_value_heads=8, vocab_size=131072,
                            max_position_embeddings=4096)


def forward_flops(cfg, tokens: int, seq: int, with_head: bool) -> float:
    h, f, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    kv = h * cfg.num_key_value_heads // cfg.num_attention_heads
    per_layer = 2 * (h * h * 2 + h * kv * 2) + 2 * (2 * h * f) + 2 * 2 * seq * h  # proj + MLP + attention
    head = 2 * h * cfg.vocab_size if with_head else 0
    return tokens * (layers * per_layer + head)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stories", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=400, help="tokens a story (lengths vary +-50%)")
    parser.add_argument("--batch-tokens", type=int, default=65536)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100/H200 SXM)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--dry-run", action="store_true", help="a tiny config on CPU, to check the script")
    args = parser.parse_args()

    import lightning.pytorch as pl
    import transformers as tf

    from emovec.capture import (
        CaptureItem,
        collate,
        plan_batches,
        pooling_weights,
        resolve_layers,
        run_capture,
    )
    from emovec.models import LoadedModel, find_decoder_layers, find_final_norm
    from emovec.store import FeatureStore

    dev = "cpu" if args.dry_run else "cuda"
    assert args.dry_run or torch.cuda.is_available(), "no GPU"
    cfg = apertus_8b_config()
    if args.dry_run:
        cfg = tf.ApertusConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                               num_key_value_heads=2, vocab_size=512, max_position_embeddings=4096)
    t0 = time.perf_counter()
    with torch.device(dev):
        torch.manual_seed(0)
        model = tf.ApertusForCausalLM(cfg).to(torch.bfloat16).eval()
    params = sum(p.numel() for p in model.parameters())
    build_s = time.perf_counter() - t0

    class _Tok:  # capture only needs pad ids; the stories are random token ids
        pad_token_id = 0

    loaded = LoadedModel(model=model, tokenizer=_Tok(), name="apertus-8b-random",
                         layers=find_decoder_layers(model), final_norm=find_final_norm(model))
    gen = torch.Generator().manual_seed(0)
    lengths = (args.tokens * (0.5 + torch.rand(args.stories, generator=gen))).long().clamp(min=60, max=512).tolist()
    items = [CaptureItem(i, torch.randint(1, cfg.vocab_size, (n,), generator=gen).tolist(), 50)
             for i, n in enumerate(lengths)]
    tokens = sum(lengths)
    plan = plan_batches(lengths, args.batch_tokens, 256)
    layers = resolve_layers("all", loaded.num_layers)
    mean_seq = sum(n * n for n in lengths) / tokens
    results = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "params": params, "build_s": build_s, "tokens": tokens,
               "stories": args.stories, "batches": len(plan), "layers": len(layers)}

    cuda = dev == "cuda"

    def timed(fn) -> tuple[float, float]:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0

    def capture() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            store = FeatureStore(tmp, "gpu")
            store.begin({}, plan, len(items))
            trainer = pl.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, logger=False, enable_checkpointing=False,
                                 enable_model_summary=False, use_distributed_sampler=False, enable_progress_bar=False)
            run_capture(loaded, items, layers, store, plan, trainer)
            feats = store.assemble(layers, {"model": loaded.name, "num_layers": cfg.num_hidden_layers,
                                                   "hidden_size": cfg.hidden_size})
            assert torch.isfinite(feats.mean).all() and feats.mean.shape == (len(items), cfg.num_hidden_layers + 1, cfg.hidden_size)

    def bare() -> None:
        with torch.inference_mode():
            for batch in plan:
                b = collate([(0, items[i]) for i in batch], 0)
                ids, mask = b["input_ids"].to(dev), b["attention_mask"].to(dev)
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                model.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)

    def common() -> None:
        with torch.inference_mode():
            order = list(range(len(items)))  # corpus order, fixed batch of 4, as the usual scripts do
            for s in range(0, len(order), 4):
                b = collate([(0, items[i]) for i in order[s:s + 4]], 0)
                ids, mask = b["input_ids"].to(dev), b["attention_mask"].to(dev)
                out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                w = pooling_weights(mask, torch.full((ids.shape[0],), 50, device=dev))
                _ = torch.stack([torch.einsum("bth,bt->bh", h.float(), w) for h in out.hidden_states]).cpu()

    bare()  # warm-up: kernels, allocator
    runs = [("capture", capture, False), ("bare", bare, False), ("common_bf16", common, True)]
    for name, fn, head in runs:
        seconds, peak = timed(fn)
        flops = forward_flops(cfg, tokens, mean_seq, head)
        results[name] = {"seconds": seconds, "tokens_per_s": tokens / seconds, "peak_gib": peak,
                         "mfu": flops / seconds / (args.peak_tflops * 1e12)}
        print(f"{name:8s} {tokens / seconds:9.0f} tokens/s  MFU {results[name]['mfu']:.2f}  "
              f"{seconds:6.1f} s  peak {peak:5.1f} GiB", flush=True)
    # The common recipe as the replication runs it: fp32 weights (P1 loads both models in fp32).
    model.float()
    seconds, peak = timed(common)
    results["common"] = {"seconds": seconds, "tokens_per_s": tokens / seconds, "peak_gib": peak,
                         "mfu": forward_flops(cfg, tokens, mean_seq, True) / seconds / (args.peak_tflops * 1e12)}
    print(f"common   {tokens / seconds:9.0f} tokens/s  (fp32 weights)  {seconds:6.1f} s  peak {peak:5.1f} GiB", flush=True)
    results["capture_over_common_bf16"] = results["capture"]["tokens_per_s"] / results["common_bf16"]["tokens_per_s"]
    results["capture_over_bare"] = results["capture"]["tokens_per_s"] / results["bare"]["tokens_per_s"]
    results["capture_over_common"] = results["capture"]["tokens_per_s"] / results["common"]["tokens_per_s"]
    print(json.dumps(results, indent=2))
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
