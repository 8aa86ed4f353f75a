"""analysis: loading run dirs, CKA, the PC plane, clusters, logit lens, and analyze.py end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.numpy import save_file

from emovec import analysis
from emovec.errors import EmovecError

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- synthetic runs


def make_run_dir(root: Path, name: str, num_layers: int = 4, n_emotions: int = 16, hidden: int = 64,
                 seed: int = 0, peak: float = 0.5, probes: bool = True) -> Path:
    """A run dir as train.py writes it, with a valence axis planted most strongly at depth `peak`."""
    rng = np.random.default_rng(seed)
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    emotions = [f"feeling_{i:02d}" for i in range(n_emotions)]
    valence = rng.permutation(np.linspace(-1, 1, n_emotions))
    arousal = rng.uniform(-1, 1, n_emotions)
    axes, _ = np.linalg.qr(rng.normal(size=(hidden, 2)))
    layer_ids = list(range(num_layers + 1))
    vectors, rows = [], []
    for layer in layer_ids:
        strength = 0.3 + 8.0 * np.exp(-((layer / num_layers - peak) ** 2) / 0.02)
        v = (strength * valence[:, None] * axes[:, 0] + 1.5 * arousal[:, None] * axes[:, 1]
             + rng.normal(size=(n_emotions, hidden)))
        v -= v.mean(axis=0)
        vectors.append(v)
        u, s, _ = np.linalg.svd(v, full_matrices=False)
        pcs = u * s
        row = {"layer": layer, "depth": layer / num_layers,
               "pc1_valence_r": abs(np.corrcoef(pcs[:, 0], valence)[0, 1]),
               "pc2_arousal_r": abs(np.corrcoef(pcs[:, 1], arousal)[0, 1]),
               "pc1_var": s[0] ** 2 / (s ** 2).sum(), "pc2_var": s[1] ** 2 / (s ** 2).sum(),
               "denoise_k": 1}
        if probes:
            row.update(probe_acc=0.1 + 0.5 * layer / num_layers, probe_valence_r2=row["pc1_valence_r"] ** 2,
                       probe_chance_acc=1 / n_emotions, probe_chance_valence_r2=0.0)
        rows.append(row)
    stacked = np.stack(vectors).astype(np.float32)
    metadata = {"emotions": json.dumps(emotions), "layers": json.dumps(layer_ids),
                "num_layers": str(num_layers), "hidden_size": str(hidden), "model": f"synthetic-{name}",
                "settings": "{}"}
    save_file({"vectors": stacked, "raw": 2 * stacked}, str(run / "vectors.safetensors"), metadata=metadata)
    pd.DataFrame(rows).to_csv(run / "layers.csv", index=False)
    pd.DataFrame({"emotion": emotions, "valence": valence, "arousal": arousal}).to_csv(
        run / "norms.csv", index=False)
    summary = {"model": f"synthetic-{name}", "num_layers": num_layers, "hidden_size": hidden,
               "layers": layer_ids, "best": {}, "settings": {},
               "counts": {"stories": 40, "stories_used": 38, "stories_dropped": 2, "emotions": n_emotions},
               "timings": {},
               "wandb": {"mode": "offline", "dir": None, "url": None, "run_id": f"run{seed}",
                         "project": "emovec"}}
    (run / "summary.json").write_text(json.dumps(summary))
    # model=tiny, so the logit lens can rebuild the run's model without a download.
    (run / ".hydra" / "config.yaml").write_text(
        f"model:\n  name: tiny\n  arch: llama\n  hidden: {hidden}\n  layers: {num_layers}\n  seed: 0\n"
        f"dataset:\n  name: synth_{name}\nnorms:\n  name: bundled\nseed: {seed}\n")
    return run


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory) -> tuple[Path, Path]:
    """Two runs of different depth and width: A peaks at depth 0.5 and has probes, B at 0.25."""
    root = tmp_path_factory.mktemp("runs")
    return (make_run_dir(root, "a", num_layers=4, hidden=64, seed=0, peak=0.5),
            make_run_dir(root, "b", num_layers=8, hidden=48, seed=1, peak=0.25, probes=False))


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


# ----------------------------------------------------------------------------- loading


def test_load_run_reads_the_contract(run_dirs):
    run = analysis.load_run(run_dirs[0])
    assert run.vectors.shape == (5, 16, 64)
    assert run.layer_indices == [0, 1, 2, 3, 4]
    assert run.num_layers == 4 and run.hidden_size == 64
    assert run.name == "tiny / synth_a"
    norms = pd.read_csv(run_dirs[0] / "norms.csv").set_index("emotion")
    np.testing.assert_allclose(run.valence, norms.loc[run.emotions, "valence"])
    assert run.best_layer() == 2  # planted at depth 0.5 of 4 layers
    assert run.has_probes
    raw = analysis.load_run(run_dirs[0], tensor="raw")
    np.testing.assert_allclose(raw.vectors, 2 * run.vectors)


@pytest.mark.parametrize("missing", ["norms.csv", "layers.csv", "summary.json", "vectors.safetensors"])
def test_load_run_names_the_missing_file(run_dirs, tmp_path, missing):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dirs[0], copy)
    (copy / missing).unlink()
    with pytest.raises(EmovecError, match=missing):
        analysis.load_run(copy)


def test_load_run_names_an_emotion_without_norms(run_dirs, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dirs[0], copy)
    norms = pd.read_csv(copy / "norms.csv")
    norms[norms.emotion != "feeling_03"].to_csv(copy / "norms.csv", index=False)
    with pytest.raises(EmovecError, match="feeling_03"):
        analysis.load_run(copy)


def test_wandb_source_offline_is_a_clear_error(tmp_path):
    with pytest.raises(EmovecError, match="online"):
        analysis.resolve_run_sources(["wandb:me/emovec/vectors:v0"], tmp_path)
    with pytest.raises(EmovecError, match="ENTITY/PROJECT/ARTIFACT:VERSION"):
        analysis.resolve_run_sources(["wandb:vectors"], tmp_path)


class _FakeArtifact:
    def __init__(self, source: Path, files: list[str]):
        self.source, self.files = source, files

    def download(self, root: str) -> str:
        import shutil

        Path(root).mkdir(parents=True)
        for name in self.files:
            shutil.copy(self.source / name, Path(root) / name)
        return root


def test_wandb_source_downloads_the_artifact(run_dirs, tmp_path, monkeypatch):
    import wandb

    asked = []

    class FakeApi:
        def artifact(self, ref):
            asked.append(ref)
            files = ["vectors.safetensors", "norms.csv"] if "partial" in ref else analysis.REQUIRED_FILES
            return _FakeArtifact(run_dirs[0], list(files))

    monkeypatch.setattr(analysis, "wandb_online", lambda: True)
    monkeypatch.setattr(wandb, "Api", FakeApi)
    [path] = analysis.resolve_run_sources(["wandb:lab/emovec/vectors-a:v3"], tmp_path)
    assert asked == ["lab/emovec/vectors-a:v3"]
    assert analysis.load_run(path).vectors.shape == (5, 16, 64)
    with pytest.raises(EmovecError, match="lacks layers.csv, summary.json"):
        analysis.resolve_run_sources(["wandb:lab/emovec/partial:v0"], tmp_path)


def test_duplicate_names_and_slugs_become_unique(run_dirs):
    runs = [analysis.load_run(run_dirs[0], name="same"), analysis.load_run(run_dirs[1], name="same"),
            analysis.load_run(run_dirs[0], name="x/y"), analysis.load_run(run_dirs[1], name="x y")]
    analysis.unique_names(runs)
    assert [r.name for r in runs[:2]] == ["same (a)", "same (b)"]
    assert len({r.slug for r in runs}) == 4


# ----------------------------------------------------------------------------- CKA


def feature_space_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA in its feature-space form, ||Y'X||^2 / (||X'X|| ||Y'Y||), as an independent check."""
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def test_cka_of_a_run_with_itself_is_one(run_dirs):
    run = analysis.load_run(run_dirs[0])
    matrix = analysis.cka_matrix(run.vectors)
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-10)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-12)
    same = analysis.matched_depth_cka(run, run)
    np.testing.assert_allclose(same["cka"], 1.0, atol=1e-10)
    assert (same["layer_a"] == same["layer_b"]).all()


def test_cka_matches_the_feature_space_formula():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(30, 20)), rng.normal(size=(30, 12)) + 0.5
    assert analysis.linear_cka(x, y) == pytest.approx(feature_space_cka(x, y), rel=1e-9)
    stack = rng.normal(size=(4, 30, 20))
    matrix = analysis.cka_matrix(stack)
    for i in range(4):
        for j in range(4):
            assert matrix[i, j] == pytest.approx(feature_space_cka(stack[i], stack[j]), rel=1e-9)


def test_cka_is_invariant_to_rotation_and_isotropic_scaling():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(25, 16)), rng.normal(size=(25, 10))
    rotation, _ = np.linalg.qr(rng.normal(size=(16, 16)))
    assert analysis.linear_cka(x, 3.7 * x @ rotation) == pytest.approx(1.0, abs=1e-10)
    assert analysis.linear_cka(x @ rotation * 0.2, y) == pytest.approx(analysis.linear_cka(x, y), rel=1e-9)
    # Not invariant to an anisotropic stretch: the check above can fail.
    stretch = np.diag(np.linspace(0.1, 5, 16))
    assert analysis.linear_cka(x, x @ stretch) < 0.99


def test_debiased_cka_is_near_zero_for_unrelated_wide_vectors():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(60, 600)), rng.normal(size=(60, 600))
    assert analysis.linear_cka(x, y) > 0.5  # the plain estimate's bias with few rows
    assert abs(analysis.linear_cka(x, y, debiased=True)) < 0.1
    assert analysis.linear_cka(x, 2 * x, debiased=True) == pytest.approx(1.0)


def test_matched_depth_pairs_layers_by_relative_depth(run_dirs):
    a, b = analysis.load_run(run_dirs[0]), analysis.load_run(run_dirs[1])
    table = analysis.matched_depth_cka(a, b)
    assert list(table["layer_a"]) == [0, 1, 2, 3, 4]
    assert list(table["layer_b"]) == [0, 2, 4, 6, 8]  # 4 vs 8 blocks: depth l/4 = 2l/8
    assert table["cka"].between(0, 1).all()


def test_adjacent_cka_reads_the_off_diagonal():
    matrix = np.array([[1.0, 0.9, 0.1], [0.9, 1.0, 0.4], [0.1, 0.4, 1.0]])
    table = analysis.adjacent_cka(matrix, [0, 1, 2])
    assert list(table["cka"]) == [0.9, 0.4]
    assert list(table["next_layer"]) == [1, 2]


# ----------------------------------------------------------------------------- PC plane, clusters


def test_pc_plane_finds_the_planted_valence_axis(run_dirs):
    run = analysis.load_run(run_dirs[0])
    vectors = run.layer_vectors(2)
    plane = analysis.pc_plane(vectors, run.valence, run.arousal)
    assert plane.valence_r > 0.9
    # Independent projection: centred SVD, up to the sign the function fixes.
    centred = vectors - vectors.mean(axis=0)
    u, s, _ = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    np.testing.assert_allclose(np.abs(plane.coords), np.abs(u[:, :2] * s[:2]), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(plane.explained, s[:2] ** 2 / (s ** 2).sum(), rtol=1e-5)


def test_clusters_recover_two_planted_groups():
    rng = np.random.default_rng(6)
    centres = rng.normal(size=(2, 32)) * 4
    vectors = np.concatenate([centres[0] + rng.normal(size=(5, 32)), centres[1] + rng.normal(size=(7, 32))])
    clustering = analysis.cluster_emotions(vectors, k=2, seed=0)
    assert len(set(clustering.labels[:5])) == 1 and len(set(clustering.labels[5:])) == 1
    assert clustering.labels[5] == 0  # the larger group is cluster 0
    assert sorted(clustering.order) == list(range(12))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(clustering.cosine, unit @ unit.T, atol=1e-12)
    # Leaf order keeps each group contiguous.
    groups = clustering.labels[clustering.order]
    assert (np.diff(groups) != 0).sum() == 1
    table = analysis.cluster_table(clustering, [f"e{i}" for i in range(12)], np.arange(12.0), np.zeros(12))
    assert list(table["size"]) == [7, 5]
    assert table.loc[1, "mean_valence"] == pytest.approx(2.0)


def test_k_larger_than_the_emotions_is_capped():
    clustering = analysis.cluster_emotions(np.eye(4) + 0.1, k=10)
    assert clustering.labels.max() == 3


# ----------------------------------------------------------------------------- logit lens


@pytest.fixture(scope="module")
def tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.norm.weight.copy_(torch.linspace(0.5, 1.5, 16))
    return model


def test_logit_lens_matches_norm_then_unembedding(tiny_llama):
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(3, 16)).astype(np.float32)
    ids, logits = analysis.logit_lens_top_tokens(vectors, tiny_llama.model.norm,
                                                 tiny_llama.get_output_embeddings(), top_k=4)
    # Independent computation: RMS norm with its weight, then the unembedding matrix.
    weight = tiny_llama.get_output_embeddings().weight.detach().numpy()
    gain = tiny_llama.model.norm.weight.detach().numpy()
    eps = tiny_llama.config.rms_norm_eps
    normed = vectors / np.sqrt((vectors ** 2).mean(axis=1, keepdims=True) + eps) * gain
    expected = normed @ weight.T
    np.testing.assert_array_equal(ids, np.argsort(-expected, axis=1)[:, :4])
    np.testing.assert_allclose(logits, np.sort(expected, axis=1)[:, ::-1][:, :4], rtol=1e-4, atol=1e-5)


def test_logit_lens_finds_a_planted_token(tiny_llama, run_dirs):
    import torch

    weight = tiny_llama.get_output_embeddings().weight
    gain = tiny_llama.model.norm.weight.detach().numpy()
    direction = np.zeros(16, dtype=np.float32)
    direction[:4] = [3.0, -2.0, 1.0, 4.0]
    with torch.no_grad():
        weight[17] = torch.as_tensor(10 * direction / gain)  # token 17 reads this direction
    ids, _ = analysis.logit_lens_top_tokens(direction[None], tiny_llama.model.norm,
                                            tiny_llama.get_output_embeddings(), top_k=1)
    assert ids[0, 0] == 17


class _ByteTokenizer:
    def decode(self, ids):
        return f"tok{ids[0]}"

    def convert_ids_to_tokens(self, token_id):
        return f"<{token_id}>"


def test_logit_lens_table_covers_layers_and_emotions(run_dirs):
    import torch

    run = analysis.load_run(run_dirs[0])
    unembedding = torch.nn.Linear(64, 30, bias=False)
    table = analysis.logit_lens_table(run, [1, 2], torch.nn.Identity(), unembedding, _ByteTokenizer(),
                                      top_k=3, emotions=["feeling_00", "feeling_05"])
    assert len(table) == 2 * 2 * 3
    assert set(table["emotion"]) == {"feeling_00", "feeling_05"}
    assert table.groupby(["layer", "emotion"])["logit"].apply(lambda s: s.is_monotonic_decreasing).all()
    with pytest.raises(EmovecError, match="no emotion 'joy'"):
        analysis.logit_lens_table(run, [1], torch.nn.Identity(), unembedding, _ByteTokenizer(),
                                  emotions=["joy"])


def test_choose_layers(run_dirs):
    run = analysis.load_run(run_dirs[0])
    assert analysis.choose_layers(run, "best") == [2]
    assert analysis.choose_layers(run, [1, "best"]) == [1, 2]
    assert analysis.choose_layers(run, "all") == [0, 1, 2, 3, 4]
    with pytest.raises(EmovecError, match="no layer 9"):
        analysis.choose_layers(run, 9)


# ----------------------------------------------------------------------------- end to end


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return hydra_compose(config_name="analyze", overrides=overrides)


EXPECTED_FIGURES = {"layer_curves", "layer_curves_depth", "probe_curves", "pc_plane_tiny_synth_a",
                    "pc_plane_tiny_synth_b", "cosine_tiny_synth_a", "cosine_tiny_synth_b",
                    "cka_tiny_synth_a", "cka_tiny_synth_b", "cka_runs"}


def test_two_runs_end_to_end(run_dirs, tmp_path, capsys):
    from emovec.report import SECTION_IDS, spec_panel_ids

    cfg = compose([f"runs=[{run_dirs[0]},{run_dirs[1]}]", "analyze.kmeans_k=3"])
    outputs = analysis.run_analysis(cfg, tmp_path / "out")

    figures = {p.stem: p for p in (tmp_path / "out" / "figures").glob("*.png")}
    assert set(figures) == EXPECTED_FIGURES
    for path in figures.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000

    printed = capsys.readouterr().out
    assert "tiny / synth_a: PC1-valence r" in printed and "layer 2/4 (depth 0.50)" in printed
    assert "layer 2/8 (depth 0.25)" in printed  # run B's planted peak
    assert "adjacent-layer CKA" in printed and "CKA at matched depth" in printed

    best = pd.read_csv(tmp_path / "out" / "best_layers.csv")
    assert list(best["best_valence_layer"]) == [2, 2]
    clusters = pd.read_csv(tmp_path / "out" / "clusters_tiny_synth_a.csv")
    assert len(clusters) == 3 and clusters["size"].sum() == 16

    page = outputs["html"].read_text()
    for section in SECTION_IDS:
        assert f'<section id="{section}">' in page
    assert page.count("data:image/png;base64,") == len(EXPECTED_FIGURES)

    spec = json.loads(outputs["wandb_spec"].read_text())
    panels = spec_panel_ids(spec)
    assert {"pc1_valence_r_by_layer", "pc2_arousal_r_by_depth", "probe_acc_by_layer",
            "figure_pc_plane", "figure_cosine", "figure_cka", "figure_layer_curves"} <= set(panels)
    assert spec["project"] == "emovec"


def test_logit_lens_end_to_end_with_the_runs_model(run_dirs, tmp_path):
    pytest.importorskip("emovec.models")
    cfg = compose([f"runs=[{run_dirs[0]}]", "analyze.logit_lens=true", "analyze.logit_lens_layers=[1,2]",
                   "analyze.logit_lens_top_k=3", "analyze.cka=false"])
    outputs = analysis.run_analysis(cfg, tmp_path / "out")
    table = pd.read_csv(outputs["logit_lens"], keep_default_na=False)
    assert len(table) == 2 * 16 * 3
    assert set(table["layer"]) == {1, 2}
    assert (table["token"] != "").all()
    assert "Top tokens" in outputs["html"].read_text()


def _analyze(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb")}
    return subprocess.run([sys.executable, str(REPO / "analyze.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow
def test_entry_point_writes_its_hydra_run_dir(run_dirs, tmp_path):
    out = tmp_path / "hydra_out"
    done = _analyze([f"runs=[{run_dirs[0]},{run_dirs[1]}]", f"hydra.run.dir={out}"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert (out / "report.html").stat().st_size > 0
    assert (out / ".hydra" / "config.yaml").is_file()
    assert "PC1-valence r" in done.stdout


@pytest.mark.slow
def test_entry_point_bad_run_exits_non_zero(tmp_path):
    done = _analyze([f"runs=[{tmp_path / 'missing'}]", f"hydra.run.dir={tmp_path / 'o'}"], tmp_path)
    assert done.returncode == 1
    assert "run dir not found" in done.stderr and "Traceback" not in done.stderr
