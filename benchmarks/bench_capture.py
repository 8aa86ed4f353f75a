"""Capture throughput on the embedded model, three ways on the same stories, each in a fresh process.

  capture   emovec's hooked capture through Trainer.predict (all layers, pooled in the hooks)
  bare      the same batches through the decoder with no hooks and no LM head
  common    the usual recipe: full model with LM head, output_hidden_states=True, batch of 4, fp32,
            pooling done afterwards

    python benchmarks/bench_capture.py [--stories 96] [--model smollm2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _stories(n: int) -> list[str]:
    from emovec.data import bundled_path, read_stories

    stories = read_stories(bundled_path("stories.jsonl"))
    step = max(1, len(stories) // n)
    return [s.text for s in stories[::step][:n]]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(method: str, model_name: str, n: int, offset: int, dtype: str = "float32") -> dict:
    from emovec.capture import (
        collate,
        pad_token_id,
        plan_batches,
        pooling_weights,
        resolve_layers,
        run_capture,
        tokenize_items,
    )
    from emovec.models import load_model
    from emovec.pipeline import make_trainer
    from emovec.store import FeatureStore

    # The common recipe is fp32 by definition; capture and bare use the dtype asked for.
    loaded = load_model({"name": model_name, "dtype": "float32" if method == "common" else dtype})
    texts = _stories(n)
    items = tokenize_items(loaded.tokenizer, texts, [offset] * len(texts), 512)
    tokens = sum(len(i.ids) for i in items)
    plan = plan_batches([len(i.ids) for i in items], 8192, 64)
    pad = pad_token_id(loaded.tokenizer)
    started = time.perf_counter()
    if method == "capture":
        with tempfile.TemporaryDirectory() as tmp:
            store = FeatureStore(tmp, "bench")
            store.begin({}, plan, len(items))
            layers = resolve_layers("all", loaded.num_layers)
            run_capture(loaded, items, layers, store, plan, make_trainer({"accelerator": "cpu"}))
    elif method == "bare":
        decoder = loaded.model.model
        with torch.inference_mode():
            for batch_ids in plan:
                b = collate([(0, items[i]) for i in batch_ids], pad)
                pos = (b["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                decoder(input_ids=b["input_ids"], attention_mask=b["attention_mask"], position_ids=pos, use_cache=False)
    elif method == "common":
        tok = loaded.tokenizer
        with torch.inference_mode():
            for start in range(0, len(texts), 4):
                enc = tok(texts[start:start + 4], return_tensors="pt", padding=True, truncation=True, max_length=512)
                out = loaded.model(**enc, output_hidden_states=True)
                w = pooling_weights(enc["attention_mask"], torch.full((enc["input_ids"].shape[0],), offset))
                _ = [torch.einsum("bth,bt->bh", h.float(), w) / w.sum(1, keepdim=True).clamp(min=1)
                     for h in out.hidden_states]
    seconds = time.perf_counter() - started
    return {"method": method, "tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "peak_rss_mb": _peak_mb()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--stories", type=int, default=96)
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--offset", type=int, default=50)
    parser.add_argument("--dtype", default="auto", help="capture/bare weights: auto (emovec's default), float32, bfloat16")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.model, args.stories, args.offset, args.dtype)))
        return
    # Warm the model conversion cache so no method pays for it.
    subprocess.run([sys.executable, "-c", f"from emovec.models import load_model; load_model({{'name': '{args.model}'}})"],
                   check=True, capture_output=True)
    results = {}
    for method in ("capture", "bare", "common"):
        out = subprocess.run([sys.executable, __file__, "--one", method, "--stories", str(args.stories),
                              "--model", args.model, "--offset", str(args.offset), "--dtype", args.dtype],
                             check=True, capture_output=True, text=True)
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\n== capture throughput: {args.model}, {args.stories} stories, "
          f"{results['capture']['tokens']} tokens, all layers, capture dtype {args.dtype}, "
          f"{torch.get_num_threads()} threads ==")
    for method, r in results.items():
        print(f"  {method:8s} {r['tokens_per_s']:8.0f} tokens/s  {r['seconds']:7.1f} s  peak RSS {r['peak_rss_mb']:6.0f} MB")
    cap, bare, common = (results[m]["tokens_per_s"] for m in ("capture", "bare", "common"))
    print(f"  capture / bare forward (goal >= 0.95): {cap / bare:.2f}")
    print(f"  capture / common recipe (goal >= 3):   {cap / common:.2f}")
    Path("bench_out").mkdir(exist_ok=True)
    Path("bench_out/capture.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
