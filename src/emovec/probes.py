"""Linear probes on every captured layer at once, trained with Lightning.

One weight tensor (layers x hidden x outputs) holds an independent linear probe per layer: the
loss is the sum of the per-layer losses, so each layer's gradient (and, with AdamW's per-element
update, each layer's trajectory) is exactly what fitting that layer alone would give, while the
work is one batched matmul instead of a Python loop over layers. The outputs are the emotion
logits followed by the regression targets (valence, arousal); a chance baseline, trained on the
training targets shuffled across stories, rides along as a second block of outputs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.model_selection import StratifiedGroupKFold
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.functional import pearson_corrcoef, r2_score
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_f1_score,
)

from emovec.errors import EmovecError

TARGETS = ("emotion", "valence", "arousal")
REGRESSION_TARGETS = ("valence", "arousal")
METRIC_COLUMNS = (
    "probe_acc", "probe_f1", "probe_top5", "probe_valence_r2", "probe_arousal_r2",
    "probe_valence_r", "probe_arousal_r", "probe_chance_acc", "probe_chance_valence_r2",
)
# Fitted on standardised features, these converge on ~1000 stories x 31 layers x 576 dims in a
# few seconds on two CPU cores; conf/probe/linear.yaml repeats them so sweeps can see them.
DEFAULTS: dict[str, Any] = {
    "lr": 3e-3, "weight_decay": 10.0, "epochs": 10, "batch_size": 256, "val_fraction": 0.2,
    "group_by_topic": False, "targets": list(TARGETS), "chance_baseline": True,
    "progress_bar": False,
}
_STD_FLOOR = 1e-6  # a dimension constant over the training split standardises to zero, not inf


@dataclass
class ProbeResult:
    """Per-layer validation metrics, the tensors to save, and how the fit went.

    `predictions` holds the validation split's indices, targets and every layer's outputs, so a
    caller (or a test) can recompute any metric independently.
    """

    metrics: pd.DataFrame
    tensors: dict[str, Tensor]
    info: dict[str, Any]
    predictions: dict[str, Tensor] = field(default_factory=dict)


class LinearProbes(pl.LightningModule):
    """`heads` independent sets of per-layer linear probes over shared features.

    Output block h of layer l is [emotion logits (C) | regression outputs (R)], trained on
    target set h (h=0: the real targets, h=1: the shuffled ones when the chance baseline is on).
    """

    def __init__(self, num_layers: int, hidden_size: int, num_classes: int, num_regression: int,
                 heads: int, lr: float, weight_decay: float) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.num_classes, self.num_regression, self.heads = num_classes, num_regression, heads
        outputs = heads * (num_classes + num_regression)
        # Zero init: the problem is convex, and no random init keeps the fit seed-independent
        # apart from the batch order.
        self.weight = nn.Parameter(torch.zeros(num_layers, hidden_size, outputs))
        self.bias = nn.Parameter(torch.zeros(num_layers, outputs))

    def forward(self, features: Tensor) -> Tensor:
        """(B, L, H) standardised features -> (B, L, heads, C + R) outputs."""
        out = torch.einsum("blh,lho->blo", features, self.weight) + self.bias
        return out.view(*out.shape[:2], self.heads, self.num_classes + self.num_regression)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        features, emotion, regression = batch  # (B, L, H), (B, heads), (B, heads, R)
        out = self(features)
        batch_size, num_layers = out.shape[:2]
        loss = out.new_zeros(())
        if self.num_classes:
            logits = out[..., : self.num_classes]
            target = emotion[:, None, :].expand(batch_size, num_layers, self.heads)
            ce = F.cross_entropy(logits.reshape(-1, self.num_classes), target.reshape(-1),
                                 reduction="none")
            # mean over stories, sum over layers and heads: each probe sees its own loss
            loss = loss + ce.view(batch_size, -1).mean(0).sum()
        if self.num_regression:
            pred = out[..., self.num_classes:]
            loss = loss + (pred - regression[:, None]).pow(2).mean(0).sum()
        self.log("train_loss", loss / (num_layers * self.heads), prog_bar=True,
                 batch_size=batch_size)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Decay the weights only: shrinking the bias would bias the probes, not regularise them.
        return torch.optim.AdamW(
            [{"params": [self.weight], "weight_decay": self.hparams.weight_decay},
             {"params": [self.bias], "weight_decay": 0.0}],
            lr=self.hparams.lr, fused=True)  # the fused kernel is ~4x faster on CPU here


def fit_probes(features: Tensor, emotion_ids: Tensor, valence: Tensor, arousal: Tensor,
               layers: Sequence[int], num_emotions: int, cfg: Mapping, seed: int,
               groups: Sequence[str] | None = None, trainer_kwargs: Mapping | None = None,
               emotion_names: Sequence[str] | None = None) -> ProbeResult:
    """Fit a linear probe per layer (all layers in one Trainer.fit) and score it on held-out stories.

    features: (N, L, H) per-story features, one slice per entry of `layers`. `groups` (one topic
    per story) is used only when cfg.group_by_topic is true. `emotion_names` (optional, index
    order) only makes error messages name emotions instead of ids.
    """
    started = time.perf_counter()
    settings = _read_settings(cfg)
    features, emotion_ids, valence, arousal = _check_inputs(
        features, emotion_ids, valence, arousal, layers, num_emotions, groups, emotion_names)
    if settings["group_by_topic"] and groups is None:
        raise EmovecError("probe.group_by_topic=true needs a topic for every story, but the corpus "
                          "has none; set probe.group_by_topic=false or add a 'topic' to each story")
    train_idx, val_idx = split_stories(
        emotion_ids, settings["val_fraction"], seed,
        groups=groups if settings["group_by_topic"] else None, emotion_names=emotion_names)

    mean, std = standardisation(features[train_idx])
    scaled = (features - mean) / std
    targets = settings["targets"]
    num_classes = num_emotions if "emotion" in targets else 0
    reg_names = [t for t in REGRESSION_TARGETS if t in targets]
    regression = torch.stack([{"valence": valence, "arousal": arousal}[t] for t in reg_names],
                             dim=-1) if reg_names else torch.zeros(len(emotion_ids), 0)
    emotion_all, regression_all = _target_sets(emotion_ids, regression, train_idx, seed,
                                               settings["chance_baseline"])
    heads = emotion_all.shape[1]

    model = LinearProbes(features.shape[1], features.shape[2], num_classes, len(reg_names), heads,
                         settings["lr"], settings["weight_decay"])
    batch_size = min(settings["batch_size"] or len(train_idx), len(train_idx))
    loader = DataLoader(
        TensorDataset(scaled[train_idx], emotion_all[train_idx], regression_all[train_idx]),
        batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    with _quiet_lightning():
        trainer = pl.Trainer(**_trainer_settings(settings, trainer_kwargs))
        trainer.fit(model, train_dataloaders=loader)

    with torch.no_grad():
        outputs = model.cpu().eval()(scaled[val_idx])  # (Nv, L, heads, C + R)
    predictions = {
        "val_index": val_idx, "emotion": emotion_ids[val_idx], "valence": valence[val_idx],
        "arousal": arousal[val_idx],
        "emotion_logits": outputs[:, :, 0, :num_classes],
        "regression": outputs[:, :, 0, num_classes:],
    }
    if heads == 2:
        predictions["chance_emotion_logits"] = outputs[:, :, 1, :num_classes]
        predictions["chance_regression"] = outputs[:, :, 1, num_classes:]
    metrics = layer_metrics(predictions, list(layers), num_classes, reg_names)

    tensors = _probe_tensors(model, mean, std, layers, num_classes)
    info = {
        "n_train": len(train_idx), "n_val": len(val_idx), "n_layers": len(layers),
        "hidden_size": features.shape[2], "num_emotions": num_emotions, "targets": list(targets),
        "regression_targets": reg_names, "grouped_by_topic": bool(settings["group_by_topic"]),
        "epochs": trainer.current_epoch, "steps": trainer.global_step,
        "batch_size": batch_size, "lr": settings["lr"],
        "weight_decay": settings["weight_decay"], "chance_baseline": heads == 2,
        "seconds": time.perf_counter() - started,
    }
    return ProbeResult(metrics=metrics, tensors=tensors, info=info, predictions=predictions)


def _target_sets(emotion_ids: Tensor, regression: Tensor, train_idx: Tensor, seed: int,
                 chance_baseline: bool) -> tuple[Tensor, Tensor]:
    """Targets per head, (N, heads) and (N, heads, R): the real ones, then the shuffled ones.

    The chance head's training rows get their targets permuted together, so it keeps the label
    distribution but loses any link between a story's features and its targets; validation
    rows keep the truth, as the chance probe is scored against it.
    """
    emotion_sets, regression_sets = [emotion_ids], [regression]
    if chance_baseline:
        gen = torch.Generator().manual_seed(seed + 1)
        shuffled = train_idx[torch.randperm(len(train_idx), generator=gen)]
        chance_emotion, chance_regression = emotion_ids.clone(), regression.clone()
        chance_emotion[train_idx] = emotion_ids[shuffled]
        chance_regression[train_idx] = regression[shuffled]
        emotion_sets.append(chance_emotion)
        regression_sets.append(chance_regression)
    return torch.stack(emotion_sets, dim=1), torch.stack(regression_sets, dim=1)


def split_stories(emotion_ids: Tensor, val_fraction: float, seed: int,
                  groups: Sequence[str] | None = None,
                  emotion_names: Sequence[str] | None = None) -> tuple[Tensor, Tensor]:
    """Seeded train/validation split of stories, stratified by emotion, every emotion in train.

    With `groups`, no group (topic) lands in both splits: StratifiedGroupKFold with
    round(1 / val_fraction) folds, the first fold that leaves every emotion in training held out.
    """
    labels = emotion_ids.numpy()
    if groups is None:
        return _stratified_split(labels, val_fraction, np.random.default_rng(seed))
    present = np.unique(labels)
    n_splits = max(2, round(1 / val_fraction))
    topics = np.asarray(list(groups))
    if len(np.unique(topics)) < n_splits:
        raise EmovecError(
            f"probe.group_by_topic=true with probe.val_fraction={val_fraction} needs at least "
            f"{n_splits} distinct topics, the corpus has {len(np.unique(topics))}")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class" is expected
        folds = list(splitter.split(np.zeros(len(labels)), labels, topics))
    missing = present
    for train, val in folds:
        missing = np.setdiff1d(present, labels[train])
        if len(missing) == 0:
            return torch.as_tensor(np.sort(train)), torch.as_tensor(np.sort(val))
    names = ", ".join(_emotion_label(int(e), emotion_names) for e in missing[:5])
    raise EmovecError(
        f"no topic-grouped split keeps every emotion in training (emotion {names} would have all "
        "its stories held out); add stories on other topics, or set probe.group_by_topic=false")


def _stratified_split(labels: np.ndarray, val_fraction: float,
                      rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """Hold out round(val_fraction * N) stories, each emotion in proportion, none emptied.

    sklearn's StratifiedShuffleSplit would refuse fewer held-out stories than emotions (171
    emotions x 3 stories, as in the smoke run) and does not promise every emotion a training
    story, so the quotas are apportioned here: floors first, the rest by largest remainder
    (ties in seeded random order), never taking an emotion's last story.
    """
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    n_val = min(max(1, round(val_fraction * len(labels))), int((counts - 1).sum()))
    exact = counts * n_val / len(labels)
    quota = np.minimum(np.floor(exact).astype(int), counts - 1)
    order = rng.permutation(len(classes))
    order = order[np.argsort(-(exact - quota)[order], kind="stable")]
    while quota.sum() < n_val:  # one round suffices for val_fraction <= 0.5; more are safe
        for c in order:
            if quota[c] < counts[c] - 1 and quota.sum() < n_val:
                quota[c] += 1
    val = np.concatenate([rng.permutation(np.flatnonzero(inverse == c))[: quota[c]]
                          for c in range(len(classes))])
    train = np.setdiff1d(np.arange(len(labels)), val)
    return torch.as_tensor(train), torch.as_tensor(np.sort(val))


def standardisation(train_features: Tensor) -> tuple[Tensor, Tensor]:
    """Per-layer, per-dimension mean and std (L, H) of the training split."""
    mean = train_features.mean(dim=0)
    std = train_features.std(dim=0, unbiased=False).clamp_min(_STD_FLOOR)
    return mean, std


def layer_metrics(predictions: Mapping[str, Tensor], layers: Sequence[int], num_classes: int,
                  regression_targets: Sequence[str]) -> pd.DataFrame:
    """One row per layer of validation metrics (NaN where a target was not probed)."""
    rows = []
    emotion = predictions["emotion"]
    for i, layer in enumerate(layers):
        row: dict[str, Any] = {"layer": int(layer), **{col: math.nan for col in METRIC_COLUMNS}}
        if num_classes:
            logits = predictions["emotion_logits"][:, i]
            row["probe_acc"] = _accuracy(logits, emotion, num_classes)
            row["probe_f1"] = multiclass_f1_score(logits, emotion, num_classes, average="macro").item()
            row["probe_top5"] = _accuracy(logits, emotion, num_classes, top_k=min(5, num_classes))
            if "chance_emotion_logits" in predictions:
                row["probe_chance_acc"] = _accuracy(predictions["chance_emotion_logits"][:, i],
                                                    emotion, num_classes)
        for j, name in enumerate(regression_targets):
            target = predictions[name]
            pred = predictions["regression"][:, i, j]
            row[f"probe_{name}_r2"] = r2_score(pred, target).item()
            row[f"probe_{name}_r"] = _pearson(pred, target)
            if name == "valence" and "chance_regression" in predictions:
                row["probe_chance_valence_r2"] = r2_score(
                    predictions["chance_regression"][:, i, j], target).item()
        rows.append(row)
    return pd.DataFrame(rows, columns=["layer", *METRIC_COLUMNS])


def save_probes(result: ProbeResult, path: str | os.PathLike, metadata: Mapping[str, str]) -> None:
    """Write the probe tensors as safetensors, atomically, with string metadata."""
    bad = [key for key, value in metadata.items() if not isinstance(value, str)]
    if bad:
        raise EmovecError(f"safetensors metadata must be strings; not so for: {', '.join(bad)}")
    info = result.info
    meta = {"targets": json.dumps(info.get("targets", [])),
            "regression_targets": json.dumps(info.get("regression_targets", [])),
            "layers": json.dumps([int(x) for x in result.tensors["layers"]]),
            "info": json.dumps(info, default=str), **dict(metadata)}
    tensors = {name: t.detach().cpu().contiguous() for name, t in result.tensors.items()}
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".safetensors.tmp")
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _read_settings(cfg: Mapping) -> dict[str, Any]:
    settings = {key: cfg.get(key, default) for key, default in DEFAULTS.items()}
    targets = list(settings["targets"] or [])
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise EmovecError(f"probe.targets must be a non-empty subset of {list(TARGETS)}, got {targets}")
    settings["targets"] = targets
    fraction = float(settings["val_fraction"])
    if not 0.0 < fraction <= 0.5:
        raise EmovecError(f"probe.val_fraction must be in (0, 0.5], got {fraction}")
    settings["val_fraction"] = fraction
    if int(settings["epochs"]) < 1:
        raise EmovecError(f"probe.epochs must be at least 1, got {settings['epochs']}")
    if settings["batch_size"] is not None and int(settings["batch_size"]) < 0:
        raise EmovecError(f"probe.batch_size must be positive (0 or null: full batch), got "
                          f"{settings['batch_size']}")
    settings["lr"], settings["weight_decay"] = float(settings["lr"]), float(settings["weight_decay"])
    settings["epochs"] = int(settings["epochs"])
    settings["batch_size"] = int(settings["batch_size"] or 0)
    return settings


def _check_inputs(features: Tensor, emotion_ids: Tensor, valence: Tensor, arousal: Tensor,
                  layers: Sequence[int], num_emotions: int, groups: Sequence[str] | None,
                  emotion_names: Sequence[str] | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if features.ndim != 3:
        raise EmovecError(f"probe features must be (stories, layers, hidden), got shape "
                          f"{tuple(features.shape)}")
    n, num_layers, _ = features.shape
    lengths = {"emotion_ids": len(emotion_ids), "valence": len(valence), "arousal": len(arousal)}
    if groups is not None:
        lengths["groups"] = len(groups)
    wrong = {k: v for k, v in lengths.items() if v != n}
    if wrong:
        raise EmovecError(f"probe inputs disagree on the number of stories: features has {n}, "
                          + ", ".join(f"{k} has {v}" for k, v in wrong.items()))
    if len(layers) != num_layers:
        raise EmovecError(f"probe features hold {num_layers} layers but {len(layers)} layer "
                          "indices were given")
    features = features.detach().cpu().float()
    finite = torch.isfinite(features).all(dim=(0, 2))
    if not finite.all():
        bad = [int(layers[i]) for i in torch.nonzero(~finite).flatten().tolist()]
        raise EmovecError(f"non-finite probe features at layer(s) {bad}")
    emotion_ids = emotion_ids.detach().cpu().long()
    if n and (emotion_ids.min() < 0 or emotion_ids.max() >= num_emotions):
        raise EmovecError(f"emotion ids must lie in [0, {num_emotions}), got "
                          f"{int(emotion_ids.min())}..{int(emotion_ids.max())}")
    valence, arousal = (t.detach().cpu().float() for t in (valence, arousal))
    for name, values in (("valence", valence), ("arousal", arousal)):
        if not torch.isfinite(values).all():
            raise EmovecError(f"non-finite {name} target for probes")
    counts = torch.bincount(emotion_ids, minlength=num_emotions)
    single = torch.nonzero(counts == 1).flatten().tolist()
    if single:
        names = ", ".join(_emotion_label(e, emotion_names) for e in single[:5])
        raise EmovecError(f"emotion {names} has only 1 story; a probe needs at least 2 stories "
                          "per emotion (one to train on, one to hold out)")
    if int((counts > 0).sum()) < 2:
        raise EmovecError("probes need stories for at least 2 emotions")
    return features, emotion_ids, valence, arousal


def _emotion_label(emotion_id: int, names: Sequence[str] | None) -> str:
    if names is not None and 0 <= emotion_id < len(names):
        return repr(names[emotion_id])
    return f"id {emotion_id}"


def _trainer_settings(settings: Mapping[str, Any], trainer_kwargs: Mapping | None) -> dict[str, Any]:
    base = {
        "max_epochs": settings["epochs"], "logger": False, "enable_checkpointing": False,
        "enable_progress_bar": bool(settings["progress_bar"]), "enable_model_summary": False,
        "num_sanity_val_steps": 0, "limit_val_batches": 0, "accelerator": "cpu", "devices": 1,
    }
    return {**base, **dict(trainer_kwargs or {})}


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's per-fit banners and dataloader hints; the caller reports results."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
             "lightning.pytorch.accelerators.cuda")
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*number of training batches.*")
            warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
            # torch deprecates a pytree class Lightning 2.6 still uses; nothing for us to fix
            warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated", category=FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _accuracy(logits: Tensor, target: Tensor, num_classes: int, top_k: int = 1) -> float:
    return multiclass_accuracy(logits, target, num_classes, average="micro", top_k=top_k).item()


def _pearson(pred: Tensor, target: Tensor) -> float:
    if pred.std() == 0 or target.std() == 0:
        return math.nan  # undefined, not 0: a constant prediction carries no correlation
    return pearson_corrcoef(pred, target).item()


def _probe_tensors(model: LinearProbes, mean: Tensor, std: Tensor, layers: Sequence[int],
                   num_classes: int) -> dict[str, Tensor]:
    """The real (not chance) probes, split by target, plus what is needed to apply them."""
    width = model.num_classes + model.num_regression
    weight = model.weight.detach().cpu()[:, :, :width]
    bias = model.bias.detach().cpu()[:, :width]
    tensors = {"feature_mean": mean.clone(), "feature_std": std.clone(),
               "layers": torch.as_tensor([int(x) for x in layers], dtype=torch.int64)}
    if num_classes:
        tensors["emotion_weight"] = weight[:, :, :num_classes].clone()
        tensors["emotion_bias"] = bias[:, :num_classes].clone()
    if model.num_regression:
        tensors["regression_weight"] = weight[:, :, num_classes:].clone()
        tensors["regression_bias"] = bias[:, num_classes:].clone()
    return tensors
