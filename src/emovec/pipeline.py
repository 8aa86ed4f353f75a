"""The train job: corpus -> capture (or cached features) -> vectors -> geometry -> probes -> outputs.

Outputs land in the run dir: layers.csv, norms.csv, vectors.safetensors, figures, probes, and
summary.json last, so a failed run never leaves a summary that looks complete.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

from emovec.capture import plan_batches, resolve_layers, run_capture, tokenize_items
from emovec.data import Story, emotions_in_order, load_corpus, load_neutral_texts
from emovec.errors import EmovecError
from emovec.geometry import best_layers, geometry_table, kmeans_clusters
from emovec.models import load_model, resolve_dtype
from emovec.norms import Norms, load_norms
from emovec.store import Features, FeatureStore, feature_key, texts_digest
from emovec.tracking import RunTracker
from emovec.vectors import EmotionVectors, compute_vectors

log = logging.getLogger(__name__)

BEST_METRICS = ("pc1_valence_r", "pc1_valence_spearman", "pc2_arousal_r", "best_valence_r", "best_arousal_r",
                "cv_valence_r2", "cv_arousal_r2", "probe_acc", "probe_f1", "probe_top5", "probe_valence_r2",
                "probe_arousal_r2")


@dataclass
class Inputs:
    stories: list[Story]
    neutral: list[str]
    norms: Norms
    emotions: list[str]
    unrated: list[str]  # emotions of the corpus the norms do not rate, left out


def load_inputs(cfg: DictConfig) -> Inputs:
    """Corpus, neutral texts and norms, checked against each other before any model runs."""
    stories = load_corpus(cfg.dataset)
    neutral = load_neutral_texts(cfg.dataset)
    norms = load_norms(cfg.norms)
    emotions = emotions_in_order(stories, list(norms.table.index))
    # A lexicon (norms=warriner) may lack some emotions; those are reported and left out, never
    # silently. Any other emotion missing from the norms is an error (usually a spelling).
    missing = set(norms.missing)
    unrated = [e for e in emotions if e in missing]
    if unrated:
        log.warning("norms %s rate no %d emotion(s) of the corpus; they are left out: %s",
                    norms.source, len(unrated), ", ".join(unrated))
        stories = [s for s in stories if s.emotion not in missing]
        emotions = [e for e in emotions if e not in missing]
    absent = [e for e in emotions if e not in norms.table.index]
    if absent:
        where = cfg.dataset.get("path") or "the bundled corpus"
        raise EmovecError(f"{len(absent)} emotion(s) of {where} are not in the norms ({norms.source}): "
                          + ", ".join(absent))
    if len(emotions) < 3:
        raise EmovecError(f"the corpus covers {len(emotions)} emotion(s); the geometry needs at least 3")
    return Inputs(stories, neutral, norms, emotions, unrated)


def feature_material(cfg: DictConfig, texts: list[str]) -> dict[str, Any]:
    """What determines the captured features; the store key hashes it."""
    model = OmegaConf.to_container(cfg.model, resolve=True)
    model = {k: v for k, v in model.items() if k not in ("padding_side", "max_memory", "device_map")}
    model["dtype"] = str(resolve_dtype(cfg.model.get("dtype", "auto"), cfg.trainer.accelerator))
    extract = cfg.extract
    return {"model": model, "texts": texts_digest(texts), "num_texts": len(texts),
            "layers": OmegaConf.to_container(extract.layers) if OmegaConf.is_config(extract.layers) else extract.layers,
            "token_offset": int(extract.token_offset), "max_length": int(extract.max_length), "version": 1}


def make_trainer(cfg: Mapping[str, Any]) -> pl.Trainer:
    kwargs: dict[str, Any] = {
        "accelerator": cfg.get("accelerator", "cpu"), "devices": cfg.get("devices", 1),
        "strategy": cfg.get("strategy", "auto"), "num_nodes": cfg.get("num_nodes", 1),
        "logger": False, "enable_checkpointing": False, "enable_model_summary": False,
        "use_distributed_sampler": False,
    }
    if cfg.get("precision"):
        kwargs["precision"] = cfg["precision"]
    return pl.Trainer(**kwargs)


def capture_features(cfg: DictConfig, inputs: Inputs, store: FeatureStore, material: dict[str, Any]) -> Features | None:
    """Run the model over stories and neutral texts; None on ranks other than 0 (they are done)."""
    loaded = load_model(cfg.model, cfg.trainer.accelerator)
    layers = resolve_layers(cfg.extract.layers, loaded.num_layers)
    offset = int(cfg.extract.token_offset)
    texts = [s.text for s in inputs.stories] + inputs.neutral
    items = tokenize_items(loaded.tokenizer, texts, [offset] * len(texts), int(cfg.extract.max_length))
    for item in items[len(inputs.stories):]:
        # A neutral text shorter than the offset still counts, pooled over all its tokens.
        item.offset = offset if len(item.ids) > offset else 0
    lengths = [len(item.ids) for item in items]
    plan = store.begin(material, plan_batches(lengths, int(cfg.extract.batch_tokens),
                                              int(cfg.extract.get("max_batch_size", 64))), len(items))
    trainer = make_trainer(cfg.trainer)
    if not run_capture(loaded, items, layers, store, plan, trainer, cfg.extract.get("padding_side", "right")):
        return None
    info = {"model": loaded.name, "num_layers": loaded.num_layers, "hidden_size": loaded.hidden_size,
            "tokens": sum(len(it.ids) for it in items), "dtype": str(next(loaded.model.parameters()).dtype),
            "world_size": trainer.world_size}
    return store.assemble(layers, info)


def usable_stories(features: Features, inputs: Inputs, offset: int) -> np.ndarray:
    """Indices of stories with a token past the offset; dropped ones are reported, empty emotions fail."""
    n = len(inputs.stories)
    counts = features.count[:n].numpy()
    keep = np.flatnonzero(counts > 0)
    dropped = n - len(keep)
    if dropped:
        log.warning("%d of %d stories have no token past extract.token_offset=%d and are left out",
                    dropped, n, offset)
    kept_emotions = {inputs.stories[i].emotion for i in keep}
    empty = [e for e in inputs.emotions if e not in kept_emotions]
    if empty:
        raise EmovecError(f"no usable story (none longer than extract.token_offset tokens) for: {', '.join(empty)}; "
                          "lower extract.token_offset or add longer stories")
    return keep


def check_finite(features: Features) -> None:
    bad = ~torch.isfinite(features.mean)
    if bad.any():
        text, slot = bad.nonzero()[0][:2].tolist()
        raise EmovecError(f"non-finite activations in the cached features (text #{text}, layer "
                          f"{features.layers[slot]}); rerun with recapture=true model.dtype=float32")


def build_vectors(cfg: DictConfig, features: Features, inputs: Inputs, keep: np.ndarray) -> EmotionVectors:
    index = {e: i for i, e in enumerate(inputs.emotions)}
    emotion_ids = torch.tensor([index[inputs.stories[i].emotion] for i in keep])
    neutral = features.mean[len(inputs.stories):] if inputs.neutral else None
    return compute_vectors(features.mean[keep], features.count[keep], emotion_ids, inputs.emotions, features.layers,
                           cfg.extract.pooling, neutral, float(cfg.extract.denoise.variance))


def fit_layer_probes(cfg: DictConfig, features: Features, inputs: Inputs, keep: np.ndarray) -> tuple[pd.DataFrame, Any]:
    from emovec.probes import fit_probes

    index = {e: i for i, e in enumerate(inputs.emotions)}
    stories = [inputs.stories[i] for i in keep]
    emotions = [s.emotion for s in stories]
    topics = [s.topic for s in stories]
    result = fit_probes(
        features.mean[keep], torch.tensor([index[e] for e in emotions]),
        torch.tensor(inputs.norms.valence(emotions), dtype=torch.float32),
        torch.tensor(inputs.norms.arousal(emotions), dtype=torch.float32),
        layers=features.layers, num_emotions=len(inputs.emotions), cfg=cfg.probe, seed=int(cfg.seed),
        groups=topics if all(t is not None for t in topics) else None,
        trainer_kwargs={"accelerator": "cpu" if cfg.trainer.accelerator == "cpu" else "auto", "devices": 1},
        emotion_names=inputs.emotions,
    )
    return result.metrics, result


def write_vectors(path: Path, vecs: EmotionVectors, info: Mapping[str, Any], settings: Mapping[str, Any]) -> None:
    metadata = {"emotions": json.dumps(vecs.emotions), "layers": json.dumps(vecs.layers),
                "num_layers": str(info["num_layers"]), "hidden_size": str(info["hidden_size"]),
                "model": str(info["model"]), "denoise_k": json.dumps(vecs.denoise_k),
                "settings": json.dumps(settings)}
    save_file({"vectors": vecs.vectors.contiguous(), "raw": vecs.raw.contiguous()}, str(path), metadata=metadata)


def draw_figures(run_dir: Path, table: pd.DataFrame, label: str) -> list[Path]:
    from emovec.figures import has_probe_columns, plot_layer_curves, plot_probe_curves

    paths = [plot_layer_curves({label: table}, run_dir / "layer_curves.png", title=label)]
    if has_probe_columns(table):
        paths.append(plot_probe_curves({label: table}, run_dir / "probe_curves.png"))
    return paths


def log_artifacts(tracker: RunTracker, cfg: DictConfig, run_dir: Path, summary: dict[str, Any],
                  emotions: list[str], probes: bool) -> None:
    """The vectors with what analyze.py needs beside them (layers, summary, norms, config)."""
    best = summary["best"]["pc1_valence_r"]
    meta = {"model": summary["model"], "dataset": cfg.dataset.name, "emotions": emotions,
            "layers": summary["layers"], "num_layers": summary["num_layers"], "pooling": cfg.extract.pooling,
            "token_offset": int(cfg.extract.token_offset), "best_layer": best["layer"], "best_pc1_valence_r": best["value"]}
    files = [run_dir / n for n in ("vectors.safetensors", "layers.csv", "summary.json", "norms.csv",
                                   ".hydra/config.yaml")]
    tracker.log_artifact([f for f in files if f.exists()], f"vectors-{cfg.model.name}-{cfg.dataset.name}",
                         "emotion-vectors", meta)
    if probes:
        tracker.log_artifact([run_dir / "probes.safetensors"], f"probes-{cfg.model.name}-{cfg.dataset.name}",
                             "emotion-probes", {"layers": summary["layers"]})


def _launching_rank() -> int:
    for var in ("RANK", "SLURM_PROCID", "LOCAL_RANK"):
        if os.environ.get(var):
            return int(os.environ[var])
    return 0


def run_train(cfg: DictConfig, run_dir: Path) -> dict[str, Any] | None:
    """The whole train job; returns the summary (None on non-zero DDP ranks)."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    inputs = load_inputs(cfg)
    texts = [s.text for s in inputs.stories] + inputs.neutral
    material = feature_material(cfg, texts)
    store = FeatureStore(cfg.cache_dir, feature_key(material))
    t = time.perf_counter()
    model_loaded = False
    if store.is_complete() and not cfg.get("recapture", False):
        log.info("features found in %s: the model is not loaded", store.dir)
        features = store.load()
    else:
        if cfg.get("recapture", False) and store.dir.exists() and _launching_rank() == 0:
            # Only the first process clears the store: DDP ranks re-run this script and would
            # otherwise delete what rank 0 has just begun.
            import shutil

            shutil.rmtree(store.dir)
        model_loaded = True
        captured = capture_features(cfg, inputs, store, material)
        if captured is None:
            return None
        features = captured
    timings["capture_s"] = time.perf_counter() - t
    if model_loaded and features.info.get("tokens"):
        timings["capture_tokens_per_s"] = features.info["tokens"] / timings["capture_s"]
    check_finite(features)
    keep = usable_stories(features, inputs, int(cfg.extract.token_offset))

    t = time.perf_counter()
    vecs = build_vectors(cfg, features, inputs, keep)
    valence, arousal = inputs.norms.valence(inputs.emotions), inputs.norms.arousal(inputs.emotions)
    num_layers = int(features.info["num_layers"])
    # Probe sweeps change nothing here: the geometry is computed once per vectors and norms.
    geometry_material = {"pooling": cfg.extract.pooling, "variance": float(cfg.extract.denoise.variance),
                         "emotions": inputs.emotions, "valence": valence.tolist(), "arousal": arousal.tolist(),
                         "stories": keep.tolist(), "seed": int(cfg.seed), "version": 1}
    table = store.cached_table("geometry", geometry_material, lambda: geometry_table(
        vecs.vectors.numpy(), vecs.layers, num_layers, valence, arousal, vecs.denoise_k, int(cfg.seed)))
    timings["geometry_s"] = time.perf_counter() - t

    probe_result = None
    if cfg.probe.get("enabled", False):
        t = time.perf_counter()
        probe_table, probe_result = fit_layer_probes(cfg, features, inputs, keep)
        table = table.merge(probe_table, on="layer", how="left")
        timings["probes_s"] = time.perf_counter() - t

    best = best_layers(table, BEST_METRICS)
    best_slot = vecs.layers.index(best["pc1_valence_r"]["layer"])
    clusters = kmeans_clusters(vecs.vectors[best_slot].numpy(), inputs.emotions,
                               int(cfg.analysis.get("kmeans_k", 10)), int(cfg.seed))
    settings = OmegaConf.to_container(cfg, resolve=True)
    label = f"{cfg.model.name} / {cfg.dataset.name}"

    run_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(run_dir / "layers.csv", index=False)
    inputs.norms.table.loc[inputs.emotions, ["valence", "arousal"]].rename_axis("emotion").to_csv(run_dir / "norms.csv")
    write_vectors(run_dir / "vectors.safetensors", vecs, features.info, settings)
    if probe_result is not None:
        from emovec.probes import save_probes

        save_probes(probe_result, run_dir / "probes.safetensors",
                    {"emotions": json.dumps(inputs.emotions), "layers": json.dumps(vecs.layers)})
    figures = draw_figures(run_dir, table, label)

    tracker = RunTracker(cfg.logger, run_dir, name=f"{cfg.model.name}-{cfg.dataset.name}", config=settings)
    tracker.log_layers(table)
    tracker.log_summary({f"best/{m}": v["value"] for m, v in best.items()}
                        | {f"best/{m}_layer": v["layer"] for m, v in best.items()})
    for path in figures:
        tracker.log_image(f"figures/{path.stem}", path)
    timings["total_s"] = time.perf_counter() - started

    summary = {
        "model": features.info["model"], "num_layers": num_layers, "hidden_size": int(features.info["hidden_size"]),
        "layers": vecs.layers, "best": best, "settings": settings,
        "counts": {"stories": len(inputs.stories), "stories_used": int(len(keep)),
                   "stories_dropped": len(inputs.stories) - int(len(keep)), "emotions": len(inputs.emotions),
                   "neutral_texts": len(inputs.neutral), "emotions_without_norms": inputs.unrated},
        "clusters": {"layer": best["pc1_valence_r"]["layer"], "k": len(clusters), "members": clusters},
        "feature_store": str(store.dir), "model_loaded": model_loaded, "norms": inputs.norms.source,
        "timings": timings, "wandb": tracker.info(),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    log_artifacts(tracker, cfg, run_dir, summary, inputs.emotions, probe_result is not None)
    tracker.finish()
    return summary
