"""All-layers-at-once probes against one probe per layer in a loop, same settings, same run.

Synthetic features the size of the embedded default (SmolLM2-135M on the bundled corpus: 2,052
stories, 30 blocks + embeddings = 31 layers, 576 dims, 171 emotions), with an emotion signal that
grows with depth. Run: python benchmarks/bench_probes.py [--stories N --layers L --hidden H]
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

from emovec.probes import DEFAULTS, fit_probes


def synthetic_features(stories: int, layers: int, hidden: int, emotions: int,
                       seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    emotion = torch.arange(stories) % emotions
    valence = torch.rand(emotions, generator=gen) * 2 - 1
    arousal = torch.rand(emotions, generator=gen) * 2 - 1
    centres = torch.randn(emotions, hidden, generator=gen)
    centres[:, 0] += 3 * valence  # valence and arousal along two fixed directions
    centres[:, 1] += 3 * arousal
    depth = torch.linspace(0, 0.5, layers)[None, :, None]
    features = torch.randn(stories, layers, hidden, generator=gen) + depth * centres[emotion][:, None]
    return features, emotion, valence[emotion], arousal[emotion]


def timed_fit(features, emotion, valence, arousal, layers, emotions, cfg):
    started = time.perf_counter()
    result = fit_probes(features, emotion, valence, arousal, layers, emotions, cfg, seed=0)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stories", type=int, default=2052)
    parser.add_argument("--layers", type=int, default=31)
    parser.add_argument("--hidden", type=int, default=576)
    parser.add_argument("--emotions", type=int, default=171)
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    features, emotion, valence, arousal = synthetic_features(
        args.stories, args.layers, args.hidden, args.emotions)
    layer_ids = list(range(args.layers))
    cfg = dict(DEFAULTS)
    # warm-up: the first Trainer in a process pays one-off imports and allocator growth
    timed_fit(features[:, :1], emotion, valence, arousal, [0], args.emotions, {**cfg, "epochs": 1})

    together, t_together = timed_fit(features, emotion, valence, arousal, layer_ids,
                                     args.emotions, cfg)
    t_loop, loop_acc = 0.0, []
    for layer in layer_ids:
        alone, seconds = timed_fit(features[:, layer:layer + 1], emotion, valence, arousal,
                                   [layer], args.emotions, cfg)
        t_loop += seconds
        loop_acc.append(float(alone.metrics["probe_acc"].iloc[0]))
    gap = max(abs(a - b) for a, b in zip(together.metrics["probe_acc"], loop_acc))

    print(f"probes: {args.stories} stories x {args.layers} layers x {args.hidden} dims, "
          f"{args.emotions} emotions; epochs={cfg['epochs']} batch_size={cfg['batch_size']} "
          f"chance_baseline={cfg['chance_baseline']} threads={torch.get_num_threads()}")
    print(f"  all layers at once      : {t_together:7.2f} s")
    print(f"  one probe per layer loop: {t_loop:7.2f} s  ({args.layers} fits)")
    print(f"  speed-up                : {t_loop / t_together:7.2f} x")
    print(f"  max |probe_acc| difference between the two: {gap:.4f}")
    best = together.metrics.loc[together.metrics["probe_acc"].idxmax()]
    print(f"  best layer {int(best['layer'])}: probe_acc {best['probe_acc']:.3f}, "
          f"valence R^2 {best['probe_valence_r2']:.3f}, chance acc {best['probe_chance_acc']:.3f}")


if __name__ == "__main__":
    main()
