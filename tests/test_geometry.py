"""Geometry metrics against an independent numpy PCA and scipy-free correlations."""

from __future__ import annotations

import numpy as np

from emovec.geometry import best_layers, geometry_table, kmeans_clusters, layer_metrics

rng = np.random.default_rng(1)
E, H = 40, 16
VALENCE = rng.uniform(-1, 1, E)
AROUSAL = rng.uniform(-1, 1, E)


def planted(noise: float = 0.05) -> np.ndarray:
    """Emotions laid out with valence on one axis (largest spread) and arousal on another."""
    basis = np.linalg.qr(rng.normal(size=(H, H)))[0]
    coords = np.zeros((E, H))
    coords[:, 0] = 3 * VALENCE
    coords[:, 1] = 1.5 * AROUSAL
    x = coords @ basis.T + noise * rng.normal(size=(E, H))
    return x - x.mean(0)


def numpy_pca_scores(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    xc = x - x.mean(0)
    vals, vecs = np.linalg.eigh(np.cov(xc.T))
    order = np.argsort(vals)[::-1]
    return xc @ vecs[:, order], vals[order] / vals.sum()


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def test_pc_correlations_match_numpy_and_are_sign_fixed():
    x = planted(noise=0.8)
    got = layer_metrics(x, VALENCE, AROUSAL)
    scores, ratio = numpy_pca_scores(x)
    assert abs(got["pc1_valence_r"] - abs(pearson(scores[:, 0], VALENCE))) < 1e-9
    assert abs(got["pc2_arousal_r"] - abs(pearson(scores[:, 1], AROUSAL))) < 1e-9
    assert got["pc1_valence_r"] >= 0 and got["pc2_arousal_r"] >= 0
    assert abs(got["pc1_var"] - ratio[0]) < 1e-9 and abs(got["pc2_var"] - ratio[1]) < 1e-9


def test_flipping_every_vector_keeps_the_metrics():
    x = planted(noise=0.5)
    a, b = layer_metrics(x, VALENCE, AROUSAL), layer_metrics(-x, VALENCE, AROUSAL)
    for key in ("pc1_valence_r", "pc1_valence_spearman", "pc2_arousal_r", "best_valence_r"):
        assert abs(a[key] - b[key]) < 1e-9


def test_planted_geometry_is_recovered():
    got = layer_metrics(planted(), VALENCE, AROUSAL)
    assert got["pc1_valence_r"] > 0.99 and got["pc2_arousal_r"] > 0.99
    assert got["best_valence_pc"] == 1 and got["best_arousal_pc"] == 2
    assert got["cv_valence_r2"] > 0.9


def test_noise_has_no_valence_geometry():
    got = layer_metrics(rng.normal(size=(E, H)), VALENCE, AROUSAL)
    assert got["pc1_valence_r"] < 0.5 and got["cv_valence_r2"] < 0.3


def test_table_and_best_layer():
    stack = np.stack([rng.normal(size=(E, H)), planted(), planted(0.8)])
    table = geometry_table(stack, [0, 3, 6], 6, VALENCE, AROUSAL, [0, 2, 1])
    assert table["layer"].tolist() == [0, 3, 6]
    assert table["depth"].tolist() == [0.0, 0.5, 1.0]
    assert table["denoise_k"].tolist() == [0, 2, 1]
    assert best_layers(table, ["pc1_valence_r"])["pc1_valence_r"]["layer"] == 3


def test_kmeans_separates_two_clear_groups():
    x = np.vstack([np.tile([1.0, 0, 0], (5, 1)), np.tile([0, 1.0, 0], (3, 1))]) + 0.01 * rng.normal(size=(8, 3))
    names = [f"e{i}" for i in range(8)]
    clusters = kmeans_clusters(x, names, k=2)
    assert sorted(map(sorted, clusters.values())) == sorted([names[:5], names[5:]])
