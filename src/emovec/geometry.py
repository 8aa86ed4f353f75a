"""Per-layer geometry of the emotion vectors against valence/arousal norms.

PCA of the (E, H) contrast matrix; PC1 against valence and PC2 against arousal (Pearson and
Spearman, each PC's sign flipped so its Pearson r >= 0, as both papers report); the best of the
first ten PCs for each; a cross-validated linear read-out of valence and arousal; the mean
pairwise cosine; k-means clusters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold, cross_val_predict

N_COMPONENTS = 10


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    if np.std(x) == 0 or np.std(y) == 0:
        return 0.0
    return float(stats.pearsonr(x, y).statistic)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if np.std(x) == 0 or np.std(y) == 0:
        return 0.0
    return float(stats.spearmanr(x, y).statistic)


def pca_scores(vectors: np.ndarray, n_components: int = N_COMPONENTS) -> tuple[np.ndarray, np.ndarray]:
    """Scores (E, k) and explained-variance ratios (k,) of the emotions' PCA."""
    k = max(1, min(n_components, vectors.shape[0] - 1, vectors.shape[1]))
    pca = PCA(n_components=k, svd_solver="full")
    return pca.fit_transform(vectors.astype(np.float64)), pca.explained_variance_ratio_


def oriented_correlations(scores: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson and Spearman r of every PC with the target, each PC signed so its Pearson r >= 0."""
    pearson = np.array([_pearson(scores[:, j], target) for j in range(scores.shape[1])])
    sign = np.where(pearson < 0, -1.0, 1.0)
    spearman = np.array([_spearman(scores[:, j], target) for j in range(scores.shape[1])]) * sign
    return pearson * sign, spearman


def cv_readout_r2(vectors: np.ndarray, target: np.ndarray, seed: int = 0, folds: int = 5) -> float:
    """R^2 of a ridge read-out of the target from the vectors, predicted out of fold."""
    folds = min(folds, len(target))
    if folds < 2:
        return float("nan")
    model = RidgeCV(alphas=np.logspace(-2, 4, 13))
    pred = cross_val_predict(model, vectors.astype(np.float64), target, cv=KFold(folds, shuffle=True, random_state=seed))
    return float(r2_score(target, pred))


def mean_cosine(vectors: np.ndarray) -> float:
    unit = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
    cos = unit @ unit.T
    off = ~np.eye(len(cos), dtype=bool)
    return float(cos[off].mean()) if off.any() else float("nan")


def layer_metrics(vectors: np.ndarray, valence: np.ndarray, arousal: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Every geometry metric of one layer's (E, H) contrast matrix."""
    scores, ratio = pca_scores(vectors)
    v_r, v_rho = oriented_correlations(scores, valence)
    a_r, a_rho = oriented_correlations(scores, arousal)
    pc2 = 1 if scores.shape[1] > 1 else 0
    return {
        "pc1_valence_r": v_r[0],
        "pc1_valence_spearman": v_rho[0],
        "pc2_arousal_r": a_r[pc2],
        "pc2_arousal_spearman": a_rho[pc2],
        "pc1_var": float(ratio[0]),
        "pc2_var": float(ratio[pc2]) if scores.shape[1] > 1 else 0.0,
        "best_valence_pc": int(np.argmax(v_r)) + 1,
        "best_valence_r": float(np.max(v_r)),
        "best_arousal_pc": int(np.argmax(a_r)) + 1,
        "best_arousal_r": float(np.max(a_r)),
        "cv_valence_r2": cv_readout_r2(vectors, valence, seed),
        "cv_arousal_r2": cv_readout_r2(vectors, arousal, seed),
        "mean_cosine": mean_cosine(vectors),
    }


def geometry_table(vectors: np.ndarray, layers: Sequence[int], num_layers: int, valence: np.ndarray,
                   arousal: np.ndarray, denoise_k: Sequence[int], seed: int = 0) -> pd.DataFrame:
    """One row a layer: `layer`, `depth` (layer / L), the metrics above and `denoise_k`."""
    rows = []
    for slot, layer in enumerate(layers):
        row = {"layer": int(layer), "depth": layer / num_layers}
        row.update(layer_metrics(vectors[slot], valence, arousal, seed))
        row["denoise_k"] = int(denoise_k[slot])
        rows.append(row)
    return pd.DataFrame(rows)


def kmeans_clusters(vectors: np.ndarray, emotions: Sequence[str], k: int = 10, seed: int = 0) -> dict[int, list[str]]:
    """k-means on unit-normalised vectors (cosine geometry), clusters listed by size."""
    k = min(k, len(emotions))
    unit = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(unit)
    groups: dict[int, list[str]] = {}
    for label, emotion in zip(labels, emotions):
        groups.setdefault(int(label), []).append(emotion)
    ordered = sorted(groups.values(), key=len, reverse=True)
    return {i: members for i, members in enumerate(ordered)}


def best_layers(table: pd.DataFrame, metrics: Sequence[str]) -> dict[str, dict[str, float]]:
    """For each metric, the layer with the highest value and that value."""
    best = {}
    for metric in metrics:
        if metric in table and table[metric].notna().any():
            i = table[metric].idxmax()
            best[metric] = {"layer": int(table.loc[i, "layer"]), "value": float(table.loc[i, metric])}
    return best
