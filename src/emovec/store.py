"""On-disk store of per-text pooled features, written in shards so a killed capture resumes.

A store lives in `<cache>/features/<key>/`, where the key hashes everything that changes the
features (model, texts, layers, token offset, max length) and nothing that does not (pooling,
denoising, probes), so sweeps over later stages reuse one capture.

Layout: `manifest.json` (key material, items, batch plan), `shards/batch-NNNNNN.safetensors`
(one a finished batch: `index`, `mean` (n, layers, H) fp32, `count` (n,)), and once every batch is
in, `features.safetensors` (the same, for all items in item order) and `complete` in the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from emovec.errors import EmovecError


@dataclass
class Features:
    """Pooled features of every captured text: mean over its pooled tokens, and how many there were."""

    mean: torch.Tensor  # (N, n_layers, H) float32
    count: torch.Tensor  # (N,) int64; 0 = no token past the offset (not usable)
    layers: list[int]
    info: dict[str, Any]  # model facts recorded at capture: name, num_layers, hidden_size


def feature_key(material: Mapping[str, Any]) -> str:
    """A short stable hash of the settings that determine the features."""
    blob = json.dumps(material, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def texts_digest(texts: Sequence[str]) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(hashlib.sha256(t.encode()).digest())
    return h.hexdigest()


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


class FeatureStore:
    def __init__(self, root: str | Path, key: str) -> None:
        self.dir = Path(root) / "features" / key
        self.key = key
        self.shards = self.dir / "shards"

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    def manifest(self) -> dict[str, Any] | None:
        if not self.manifest_path.exists():
            return None
        return json.loads(self.manifest_path.read_text())

    def is_complete(self) -> bool:
        m = self.manifest()
        return bool(m and m.get("complete") and (self.dir / "features.safetensors").exists())

    def begin(self, material: Mapping[str, Any], plan: list[list[int]], num_items: int) -> list[list[int]]:
        """Record the batch plan, or return the one an interrupted run already recorded."""
        existing = self.manifest()
        if existing is not None and existing.get("num_items") == num_items:
            return [list(b) for b in existing["plan"]]
        self.shards.mkdir(parents=True, exist_ok=True)
        manifest = {"key": self.key, "material": material, "num_items": num_items, "plan": plan,
                    "complete": False}
        _atomic_write_text(self.manifest_path, json.dumps(manifest))
        return plan

    def shard_path(self, batch_id: int) -> Path:
        return self.shards / f"batch-{batch_id:06d}.safetensors"

    def done_batches(self) -> set[int]:
        if not self.shards.exists():
            return set()
        return {int(p.name[6:12]) for p in self.shards.glob("batch-*.safetensors")}

    def write_shard(self, batch_id: int, index: torch.Tensor, mean: torch.Tensor, count: torch.Tensor) -> None:
        _atomic_save({"index": index.cpu(), "mean": mean.cpu().float(), "count": count.cpu()},
                     self.shard_path(batch_id))

    def assemble(self, layers: list[int], info: Mapping[str, Any]) -> Features:
        """Join the shards into one item-ordered file; every item must be in exactly one shard."""
        manifest = self.manifest()
        if manifest is None:
            raise EmovecError(f"{self.dir}: no capture was started here")
        plan, n = manifest["plan"], manifest["num_items"]
        missing = [b for b in range(len(plan)) if not self.shard_path(b).exists()]
        if missing:
            raise EmovecError(f"{self.dir}: {len(missing)} of {len(plan)} capture shards are missing; "
                              "rerun the same command to resume")
        mean = count = None
        seen = torch.zeros(n, dtype=torch.bool)
        for b in range(len(plan)):
            shard = load_file(str(self.shard_path(b)))
            idx = shard["index"].long()
            if mean is None:
                mean = torch.zeros((n, *shard["mean"].shape[1:]), dtype=torch.float32)
                count = torch.zeros(n, dtype=torch.long)
            if seen[idx].any():
                raise EmovecError(f"{self.shard_path(b)}: holds items already in another shard")
            seen[idx] = True
            mean[idx] = shard["mean"]
            count[idx] = shard["count"].long()
        if mean is None or count is None:
            raise EmovecError(f"{self.dir}: the capture plan is empty")
        _atomic_save({"mean": mean, "count": count}, self.dir / "features.safetensors",
                     metadata={"layers": json.dumps(layers)})
        manifest["complete"] = True
        manifest["layers"] = layers
        manifest["info"] = dict(info)
        _atomic_write_text(self.manifest_path, json.dumps(manifest))
        return Features(mean=mean, count=count, layers=layers, info=dict(info))

    def load(self) -> Features:
        path = self.dir / "features.safetensors"
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            layers = json.loads(fh.metadata()["layers"])
        tensors = load_file(str(path))
        info = (self.manifest() or {}).get("info", {})
        return Features(mean=tensors["mean"], count=tensors["count"], layers=layers, info=info)

    def cached_table(self, name: str, material: Mapping[str, Any], compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
        """A table derived from these features, computed once per `material` (e.g. pooling, norms)."""
        path = self.dir / f"{name}-{feature_key(material)}.csv"
        if path.exists():
            return pd.read_csv(path)
        table = compute()
        _atomic_write_text(path, table.to_csv(index=False))
        return table
