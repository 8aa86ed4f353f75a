"""DDP capture on 2 CPU processes (gloo) equals 1 process; a killed rank resumes from its shards."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import run_cli, tiny_overrides

pytestmark = pytest.mark.slow
DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]


def train(corpus, run_dir: Path, cache: Path, *extra: str, env: dict | None = None):
    overrides = tiny_overrides(corpus, "logger=none", "probe=none", "extract.batch_tokens=128",
                               f"hydra.run.dir={run_dir}", *extra)
    return run_cli("train.py", overrides, env={"EMOVEC_CACHE": str(cache), **(env or {})})


def features(run_dir: Path) -> dict[str, torch.Tensor]:
    store = Path(json.loads((run_dir / "summary.json").read_text())["feature_store"])
    return load_file(str(store / "features.safetensors"))


def assert_same_results(a: Path, b: Path) -> None:
    fa, fb = features(a), features(b)
    assert torch.equal(fa["count"], fb["count"])
    torch.testing.assert_close(fa["mean"], fb["mean"], atol=1e-5, rtol=1e-5)
    va, vb = load_file(str(a / "vectors.safetensors")), load_file(str(b / "vectors.safetensors"))
    torch.testing.assert_close(va["vectors"], vb["vectors"], atol=1e-4, rtol=1e-4)
    pd.testing.assert_frame_equal(pd.read_csv(a / "layers.csv"), pd.read_csv(b / "layers.csv"), atol=1e-4)


def test_two_processes_equal_one(tiny_corpus, tmp_path):
    one = train(tiny_corpus, tmp_path / "one", tmp_path / "c1")
    assert one.returncode == 0, one.stderr[-3000:]
    two = train(tiny_corpus, tmp_path / "two", tmp_path / "c2", *DDP)
    assert two.returncode == 0, two.stderr[-3000:]
    assert_same_results(tmp_path / "one", tmp_path / "two")
    # Every story counted once: as many shards as planned batches, no item in two shards.
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["counts"]["stories_used"] == 16


def test_killed_rank_resumes_from_its_shards(tiny_corpus, tmp_path):
    reference = train(tiny_corpus, tmp_path / "ref", tmp_path / "c1")
    assert reference.returncode == 0, reference.stderr[-3000:]
    cache = tmp_path / "c2"
    crashed = train(tiny_corpus, tmp_path / "crash", cache, *DDP,
                    env={"EMOVEC_FAULT_AFTER_SHARDS": "1", "EMOVEC_FAULT_RANK": "1"})
    assert crashed.returncode != 0
    assert not (tmp_path / "crash" / "summary.json").exists()
    shards = {p: p.stat().st_mtime_ns for p in cache.glob("features/*/shards/*.safetensors")}
    manifest = json.loads(next(cache.glob("features/*/manifest.json")).read_text())
    assert 0 < len(shards) < len(manifest["plan"]), "the crash should leave part of the capture on disk"
    resumed = train(tiny_corpus, tmp_path / "resumed", cache, *DDP)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert all(p.stat().st_mtime_ns == t for p, t in shards.items()), "finished shards were recomputed"
    assert_same_results(tmp_path / "ref", tmp_path / "resumed")
