"""Compare finished runs: load their outputs, measure geometry across layers and runs, summarise.

A run is a train.py run dir (or a W&B vectors artifact downloaded into one). Everything here is
computed from the run's files; nothing reruns the model except the optional logit lens.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from emovec import figures, report
from emovec.errors import EmovecError
from emovec.report import wandb_online

WANDB_PREFIX = "wandb:"
REQUIRED_FILES = ("vectors.safetensors", "layers.csv", "summary.json", "norms.csv")
LAYER_COLUMNS = ("layer", "pc1_valence_r", "pc2_arousal_r")


@dataclass
class Run:
    """One finished run: its vectors, per-layer metrics, norms and settings."""

    name: str
    path: Path
    layers: pd.DataFrame
    summary: dict[str, Any]
    norms: pd.DataFrame
    emotions: list[str]
    layer_indices: list[int]
    num_layers: int
    hidden_size: int
    model: str
    vectors: np.ndarray  # (n_captured_layers, E, H) float32
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def valence(self) -> np.ndarray:
        return self.norms.loc[self.emotions, "valence"].to_numpy(dtype=np.float64)

    @property
    def arousal(self) -> np.ndarray:
        return self.norms.loc[self.emotions, "arousal"].to_numpy(dtype=np.float64)

    @property
    def has_probes(self) -> bool:
        return figures.has_probe_columns(self.layers)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "_", self.name).strip("_").lower() or "run"

    def depth(self, layer: int) -> float:
        return layer / max(self.num_layers, 1)

    def layer_vectors(self, layer: int) -> np.ndarray:
        """The (E, H) vectors captured at a layer index (not a position in the captured list)."""
        if layer not in self.layer_indices:
            raise EmovecError(
                f"run {self.name!r} has no layer {layer}; captured layers: {self.layer_indices}"
            )
        return self.vectors[self.layer_indices.index(layer)]

    def best_layer(self, metric: str = "pc1_valence_r") -> int:
        """The layer where a layers.csv metric peaks (NaN rows ignored)."""
        if metric not in self.layers.columns or self.layers[metric].isna().all():
            raise EmovecError(f"run {self.name!r}: layers.csv has no values of {metric!r}")
        return int(self.layers.loc[self.layers[metric].idxmax(), "layer"])


# ----------------------------------------------------------------------------- loading runs


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise EmovecError(f"{path}: cannot read CSV ({exc})") from exc


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise EmovecError(f"{path}: cannot read JSON ({exc})") from exc


def _read_vectors(path: Path, tensor: str = "vectors") -> tuple[np.ndarray, dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            available = handle.keys()
            if tensor not in available:
                raise EmovecError(f"{path}: no tensor named {tensor!r}")
            vectors = handle.get_tensor(tensor).astype(np.float32)
    except SafetensorError as exc:
        raise EmovecError(f"{path}: not a readable safetensors file ({exc})") from exc
    if vectors.ndim != 3:
        raise EmovecError(f"{path}: 'vectors' must be (layers, emotions, hidden), got {vectors.shape}")
    return vectors, metadata


def _metadata_list(metadata: Mapping[str, str], key: str, path: Path) -> list:
    try:
        value = json.loads(metadata[key])
    except KeyError as exc:
        raise EmovecError(f"{path}: metadata lacks {key!r}") from exc
    except ValueError as exc:
        raise EmovecError(f"{path}: metadata {key!r} is not a JSON list") from exc
    if not isinstance(value, list):
        raise EmovecError(f"{path}: metadata {key!r} is not a JSON list")
    return value


def _read_norms(path: Path, emotions: Sequence[str]) -> pd.DataFrame:
    norms = _read_csv(path)
    missing_cols = {"emotion", "valence", "arousal"} - set(norms.columns)
    if missing_cols:
        raise EmovecError(f"{path}: missing columns {sorted(missing_cols)}")
    norms = norms.drop_duplicates("emotion").set_index("emotion")
    missing = [e for e in emotions if e not in norms.index]
    if missing:
        raise EmovecError(f"{path}: no valence/arousal for emotion {missing[0]!r}")
    return norms


def _read_config(run_dir: Path, summary: Mapping[str, Any]) -> dict[str, Any]:
    config_path = run_dir / ".hydra" / "config.yaml"
    if config_path.is_file():
        try:
            return OmegaConf.to_container(OmegaConf.load(config_path), resolve=False)  # type: ignore[return-value]
        except Exception as exc:  # omegaconf raises several YAML error types
            raise EmovecError(f"{config_path}: cannot read config ({exc})") from exc
    return dict(summary.get("settings") or {})


def load_run(path: str | Path, name: str | None = None, tensor: str = "vectors") -> Run:
    """Load a run dir written by train.py, checking every file the analysis needs.

    tensor picks the vectors: "vectors" (denoised) or "raw" (before denoising).
    """
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise EmovecError(f"run dir not found: {run_dir}")
    missing = [f for f in REQUIRED_FILES if not (run_dir / f).is_file()]
    if missing:
        raise EmovecError(f"{run_dir}: not a finished run, missing {', '.join(missing)}")

    vectors, metadata = _read_vectors(run_dir / "vectors.safetensors", tensor)
    emotions = [str(e) for e in _metadata_list(metadata, "emotions", run_dir / "vectors.safetensors")]
    layer_indices = [int(x) for x in _metadata_list(metadata, "layers", run_dir / "vectors.safetensors")]
    if (len(layer_indices), len(emotions)) != vectors.shape[:2]:
        raise EmovecError(
            f"{run_dir / 'vectors.safetensors'}: vectors shape {vectors.shape} does not match "
            f"{len(layer_indices)} layers x {len(emotions)} emotions in its metadata"
        )
    if not np.isfinite(vectors).all():
        raise EmovecError(f"{run_dir / 'vectors.safetensors'}: vectors hold non-finite values")

    summary = _read_json(run_dir / "summary.json")
    layers = _read_csv(run_dir / "layers.csv")
    absent = [c for c in LAYER_COLUMNS if c not in layers.columns]
    if absent:
        raise EmovecError(f"{run_dir / 'layers.csv'}: missing columns {absent}")
    num_layers = int(summary.get("num_layers") or metadata.get("num_layers") or max(layer_indices))
    if "depth" not in layers.columns:
        layers["depth"] = layers["layer"] / max(num_layers, 1)
    layers = layers.sort_values("layer").reset_index(drop=True)

    config = _read_config(run_dir, summary)
    model = str(summary.get("model") or metadata.get("model") or run_dir.name)
    return Run(
        name=name or default_run_name(model, config, run_dir),
        path=run_dir,
        layers=layers,
        summary=summary,
        norms=_read_norms(run_dir / "norms.csv", emotions),
        emotions=emotions,
        layer_indices=layer_indices,
        num_layers=num_layers,
        hidden_size=int(summary.get("hidden_size") or vectors.shape[2]),
        model=model,
        vectors=vectors,
        config=config,
    )


def default_run_name(model: str, config: Mapping[str, Any], run_dir: Path) -> str:
    """'<model> / <dataset>' from the run's settings, or the dir name when unknown."""
    model_name = (config.get("model") or {}).get("name") if isinstance(config.get("model"), Mapping) else None
    dataset = config.get("dataset")
    dataset_name = dataset.get("name") if isinstance(dataset, Mapping) else None
    head = model_name or model.split("/")[-1] or run_dir.name
    return f"{head} / {dataset_name}" if dataset_name else head


def unique_names(runs: Sequence[Run]) -> None:
    """Make run names (and their file slugs) unique in place: the run dir name, then a counter."""
    repeated = {name for name in (r.name for r in runs) if sum(r.name == name for r in runs) > 1}
    for run in runs:
        if run.name in repeated:
            run.name = f"{run.name} ({run.path.name})"
    seen: dict[str, int] = {}
    for run in runs:
        # Names that differ only in punctuation share a file slug; number them apart.
        count = seen.get(run.slug, 0)
        seen[run.slug] = count + 1
        if count:
            run.name = f"{run.name} #{count + 1}"


# ----------------------------------------------------------------------------- W&B artifacts


def download_artifact(reference: str, root: Path) -> Path:
    """Download a vectors artifact 'wandb:ENTITY/PROJECT/NAME:VERSION' into root and return it."""
    ref = reference.removeprefix(WANDB_PREFIX)
    if ref.count("/") != 2 or ":" not in ref.rsplit("/", 1)[-1]:
        raise EmovecError(f"W&B run reference must be wandb:ENTITY/PROJECT/ARTIFACT:VERSION, got {reference!r}")
    if not wandb_online():
        raise EmovecError(
            f"{reference}: downloading a W&B artifact needs W&B online (an API key and no "
            "WANDB_MODE=offline); pass the run dir instead"
        )
    import wandb

    target = root / re.sub(r"[^A-Za-z0-9._-]+", "_", ref)
    try:
        artifact = wandb.Api().artifact(ref)
        artifact.download(root=str(target))
    except Exception as exc:  # wandb raises its own CommError/ValueError family
        raise EmovecError(f"{reference}: cannot download the W&B artifact ({exc})") from exc
    missing = [f for f in REQUIRED_FILES if not (target / f).is_file()]
    if missing:
        raise EmovecError(f"{reference}: the artifact lacks {', '.join(missing)}; it must hold the run "
                          "dir's files, or pass the run dir instead")
    return target


def resolve_run_sources(sources: Sequence[str], download_root: Path) -> list[Path]:
    """Turn each run argument (a dir, or a wandb: artifact reference) into a local run dir."""
    if not sources:
        raise EmovecError("no runs given: use runs=[DIR,...] or runs=[wandb:ENTITY/PROJECT/ARTIFACT:VERSION]")
    paths = []
    for source in sources:
        source = str(source)
        if source.startswith(WANDB_PREFIX):
            paths.append(download_artifact(source, download_root))
        else:
            paths.append(Path(source).expanduser())
    return paths


# ----------------------------------------------------------------------------- geometry


def _centred_gram(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    return x @ x.T


def _hsic_matrix(grams: np.ndarray, debiased: bool) -> np.ndarray:
    """HSIC between every pair of (m, n, n) linear Gram matrices of centred features.

    debiased uses the unbiased estimator of Song et al. (2012): with few rows and many features
    the plain estimate is biased upwards, so even unrelated representations score high.
    """
    m, n, _ = grams.shape
    if not debiased:
        flat = grams.reshape(m, -1)
        return flat @ flat.T
    if n < 4:
        raise EmovecError(f"debiased CKA needs at least 4 emotions, got {n}")
    g = grams.copy()
    g[:, np.arange(n), np.arange(n)] = 0.0
    flat = g.reshape(m, -1)
    sums = g.sum(axis=(1, 2))
    rows = g.sum(axis=2)
    hsic = flat @ flat.T + np.outer(sums, sums) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * rows @ rows.T
    return hsic / (n * (n - 3))


def _cka_from_grams(grams: np.ndarray, debiased: bool) -> np.ndarray:
    hsic = _hsic_matrix(grams, debiased)
    scale = np.sqrt(np.clip(np.diag(hsic), 0.0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        return hsic / np.outer(scale, scale)


def linear_cka(x: np.ndarray, y: np.ndarray, debiased: bool = False) -> float:
    """Linear CKA between two representations of the same rows, (n, p) and (n, q)."""
    if x.shape[0] != y.shape[0]:
        raise EmovecError(f"CKA needs the same rows in both, got {x.shape[0]} and {y.shape[0]}")
    return float(_cka_from_grams(np.stack([_centred_gram(x), _centred_gram(y)]), debiased)[0, 1])


def cka_matrix(vectors: np.ndarray, debiased: bool = False) -> np.ndarray:
    """Linear CKA between every pair of layers of one run's (layers, E, H) vectors."""
    return _cka_from_grams(np.stack([_centred_gram(v) for v in vectors]), debiased)


def matched_depth_cka(a: Run, b: Run, debiased: bool = False) -> pd.DataFrame:
    """CKA between run a's layers and the layer of run b at the nearest relative depth.

    Only emotions both runs share count, in run a's order, so the rows of both match.
    """
    shared = [e for e in a.emotions if e in set(b.emotions)]
    if len(shared) < 3:
        raise EmovecError(f"runs {a.name!r} and {b.name!r} share {len(shared)} emotions; CKA needs 3")
    rows_a = [a.emotions.index(e) for e in shared]
    rows_b = [b.emotions.index(e) for e in shared]
    depths_b = np.array([b.depth(layer) for layer in b.layer_indices])
    records = []
    for i, layer in enumerate(a.layer_indices):
        j = int(np.argmin(np.abs(depths_b - a.depth(layer))))
        records.append({
            "layer_a": layer,
            "depth_a": a.depth(layer),
            "layer_b": b.layer_indices[j],
            "depth_b": float(depths_b[j]),
            "cka": linear_cka(a.vectors[i][rows_a], b.vectors[j][rows_b], debiased),
        })
    return pd.DataFrame.from_records(records)


def adjacent_cka(matrix: np.ndarray, layer_indices: Sequence[int]) -> pd.DataFrame:
    """CKA between each captured layer and the next one: how far the geometry drifts."""
    return pd.DataFrame({
        "layer": list(layer_indices[:-1]),
        "next_layer": list(layer_indices[1:]),
        "cka": [float(matrix[i, i + 1]) for i in range(len(layer_indices) - 1)],
    })


@dataclass
class Plane:
    """Emotions in the PC1-PC2 plane, signs fixed so PC1 rises with valence and PC2 with arousal."""

    coords: np.ndarray  # (E, 2)
    explained: np.ndarray  # (2,) explained-variance ratios
    valence_r: float
    arousal_r: float


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def pc_plane(vectors: np.ndarray, valence: np.ndarray, arousal: np.ndarray) -> Plane:
    """Project (E, H) vectors onto their first two principal components."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, svd_solver="full")
    coords = pca.fit_transform(np.asarray(vectors, dtype=np.float64))
    # A PC's sign is arbitrary; orient it as the paper reads it.
    if _pearson(coords[:, 0], valence) < 0:
        coords[:, 0] *= -1
    if _pearson(coords[:, 1], arousal) < 0:
        coords[:, 1] *= -1
    return Plane(coords, pca.explained_variance_ratio_, _pearson(coords[:, 0], valence),
                 _pearson(coords[:, 1], arousal))


@dataclass
class Clustering:
    """Cosine similarities in hierarchical-clustering order, and k-means clusters."""

    cosine: np.ndarray  # (E, E) in the original emotion order
    order: np.ndarray  # leaf order of the hierarchical clustering
    labels: np.ndarray  # k-means cluster of each emotion, 0..k-1, largest cluster first


def cluster_emotions(vectors: np.ndarray, k: int, seed: int = 0) -> Clustering:
    """Cosine matrix, its average-linkage leaf order, and k-means on the unit vectors."""
    from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
    from scipy.spatial.distance import pdist
    from sklearn.cluster import KMeans

    x = np.asarray(vectors, dtype=np.float64)
    lengths = np.linalg.norm(x, axis=1)
    if (lengths == 0).any():
        raise EmovecError(f"emotion row {int(np.argmin(lengths))} has a zero vector; cosine is undefined")
    unit = x / lengths[:, None]
    cosine = unit @ unit.T
    distances = np.clip(pdist(unit, metric="cosine"), 0.0, None)
    tree = linkage(distances, method="average")
    order = leaves_list(optimal_leaf_ordering(tree, distances))

    k = max(1, min(int(k), len(x)))
    raw = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(unit)
    by_size = np.argsort(-np.bincount(raw, minlength=k), kind="stable")
    relabel = np.empty(k, dtype=int)
    relabel[by_size] = np.arange(k)
    return Clustering(cosine=cosine, order=order, labels=relabel[raw])


def cluster_table(clustering: Clustering, emotions: Sequence[str], valence: np.ndarray,
                  arousal: np.ndarray) -> pd.DataFrame:
    """One row per k-means cluster: size, mean valence and arousal, members in tree order."""
    rows = []
    for cluster in range(int(clustering.labels.max()) + 1):
        members = [i for i in clustering.order if clustering.labels[i] == cluster]
        rows.append({
            "cluster": cluster + 1,
            "size": len(members),
            "mean_valence": float(np.mean(valence[members])),
            "mean_arousal": float(np.mean(arousal[members])),
            "emotions": ", ".join(emotions[i] for i in members),
        })
    return pd.DataFrame.from_records(rows)


# ----------------------------------------------------------------------------- logit lens


def logit_lens_top_tokens(vectors: Any, final_norm: Any, unembedding: Any, top_k: int = 5):
    """Push (n, H) vectors through the final norm and the unembedding; top-k token ids and logits."""
    import torch

    weight = unembedding.weight
    with torch.no_grad():
        x = torch.as_tensor(np.asarray(vectors), dtype=weight.dtype, device=weight.device)
        logits = unembedding(final_norm(x)).float()
        values, ids = torch.topk(logits, k=min(top_k, logits.shape[-1]), dim=-1)
    return ids.cpu().numpy(), values.cpu().numpy()


def logit_lens_table(run: Run, layers: Sequence[int], final_norm: Any, unembedding: Any,
                     tokenizer: Any, top_k: int = 5,
                     emotions: Sequence[str] | None = None) -> pd.DataFrame:
    """Long table (layer, emotion, rank, token_id, token, logit) of the tokens each vector promotes."""
    chosen = list(emotions) if emotions else run.emotions
    unknown = [e for e in chosen if e not in run.emotions]
    if unknown:
        raise EmovecError(f"logit lens: run {run.name!r} has no emotion {unknown[0]!r}")
    rows_idx = [run.emotions.index(e) for e in chosen]
    records = []
    for layer in layers:
        ids, logits = logit_lens_top_tokens(run.layer_vectors(layer)[rows_idx], final_norm,
                                            unembedding, top_k)
        for emotion, id_row, logit_row in zip(chosen, ids, logits):
            for rank, (token_id, logit) in enumerate(zip(id_row, logit_row), start=1):
                records.append({
                    "run": run.name, "layer": int(layer), "emotion": emotion, "rank": rank,
                    "token_id": int(token_id), "token": token_text(tokenizer, int(token_id)),
                    "logit": float(logit),
                })
    return pd.DataFrame.from_records(records)


def token_text(tokenizer: Any, token_id: int) -> str:
    """A token as text; a byte fragment that decodes to nothing readable keeps its vocabulary form."""
    text = tokenizer.decode([token_id])
    if "\ufffd" in text or not text:
        return str(tokenizer.convert_ids_to_tokens(token_id))
    return text


def load_run_model(run: Run):
    """Load the model a run used, from its saved Hydra config."""
    model_cfg = run.config.get("model")
    if not model_cfg:
        raise EmovecError(f"{run.path}: no model settings (.hydra/config.yaml or summary.json) for the logit lens")
    try:
        from emovec.models import load_model
    except ImportError as exc:
        raise EmovecError(f"logit lens needs emovec.models ({exc})") from exc
    return load_model(OmegaConf.create(model_cfg))


def final_norm_and_unembedding(loaded: Any) -> tuple[Any, Any]:
    """The final norm and the output embedding of a loaded model."""
    norm = getattr(loaded, "final_norm", None)
    if norm is None:
        raise EmovecError(f"model {getattr(loaded, 'name', '?')}: no final norm found for the logit lens")
    unembedding = loaded.model.get_output_embeddings()
    if unembedding is None:
        raise EmovecError(f"model {getattr(loaded, 'name', '?')}: no output embedding for the logit lens")
    return norm, unembedding


def choose_layers(run: Run, spec: Any) -> list[int]:
    """Layers named by a setting: 'best', 'all', one layer index, or a list of indices."""
    if spec is None or spec == "best":
        return [run.best_layer()]
    if spec == "all":
        return list(run.layer_indices)
    values = list(spec) if isinstance(spec, (list, tuple)) or OmegaConf.is_list(spec) else [spec]
    layers = []
    for value in values:
        if value == "best":
            layers.append(run.best_layer())
            continue
        try:
            layer = int(value)
        except (TypeError, ValueError) as exc:
            raise EmovecError(f"layer setting must be 'best', 'all' or layer indices, got {value!r}") from exc
        run.layer_vectors(layer)  # fails clearly when the layer was not captured
        layers.append(layer)
    return layers


# ----------------------------------------------------------------------------- summaries


def best_layer_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Per run: peak PC1-valence r and PC2-arousal r, their layers and relative depths."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": run.name, "model": run.model, "num_layers": run.num_layers,
                               "emotions": len(run.emotions)}
        for metric, key in (("pc1_valence_r", "valence"), ("pc2_arousal_r", "arousal")):
            layer = run.best_layer(metric)
            value = float(run.layers.loc[run.layers["layer"] == layer, metric].iloc[0])
            row.update({f"best_{key}_layer": layer, f"best_{key}_depth": run.depth(layer),
                        f"best_{key}_r": value})
        if run.has_probes:
            layer = run.best_layer("probe_acc")
            row["best_probe_acc"] = float(run.layers.loc[run.layers["layer"] == layer, "probe_acc"].iloc[0])
            row["best_probe_layer"] = layer
        rows.append(row)
    table = pd.DataFrame.from_records(rows)
    if "best_probe_layer" in table.columns:  # runs without probes leave gaps; keep layers integral
        table["best_probe_layer"] = table["best_probe_layer"].astype("Int64")
    return table


def text_summary(best: pd.DataFrame, drift: Mapping[str, pd.DataFrame],
                 cross: Mapping[str, pd.DataFrame]) -> str:
    """A few lines for the terminal: peaks, where valence peaks in depth, and layer drift."""
    lines = ["emovec analysis"]
    for _, row in best.iterrows():
        lines.append(
            f"- {row['run']}: PC1-valence r {row['best_valence_r']:.3f} at layer "
            f"{row['best_valence_layer']}/{row['num_layers']} (depth {row['best_valence_depth']:.2f}); "
            f"PC2-arousal r {row['best_arousal_r']:.3f} at layer {row['best_arousal_layer']}"
        )
        adjacent = drift.get(row["run"])
        if adjacent is not None and len(adjacent):
            worst = adjacent.loc[adjacent["cka"].idxmin()]
            lines.append(
                f"  adjacent-layer CKA mean {adjacent['cka'].mean():.3f}, lowest "
                f"{worst['cka']:.3f} between layers {int(worst['layer'])} and {int(worst['next_layer'])}"
            )
    for pair, table in cross.items():
        lines.append(f"- CKA at matched depth, {pair}: mean {table['cka'].mean():.3f}, "
                     f"min {table['cka'].min():.3f}, max {table['cka'].max():.3f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the whole analysis


@dataclass
class RunGeometry:
    """What the analysis measured on one run at its chosen layer and across its layers."""

    layer: int
    plane: Plane
    clustering: Clustering
    clusters: pd.DataFrame
    cka: np.ndarray | None
    adjacent: pd.DataFrame | None


def analyse_run(run: Run, layer_spec: Any, k: int, seed: int, with_cka: bool,
                debiased: bool = False) -> RunGeometry:
    """PC plane and clusters at one layer, CKA across all layers."""
    layer = choose_layers(run, layer_spec)[0]
    vectors = run.layer_vectors(layer)
    clustering = cluster_emotions(vectors, k, seed)
    cka = cka_matrix(run.vectors, debiased) if with_cka else None
    return RunGeometry(
        layer=layer,
        plane=pc_plane(vectors, run.valence, run.arousal),
        clustering=clustering,
        clusters=cluster_table(clustering, run.emotions, run.valence, run.arousal),
        cka=cka,
        adjacent=adjacent_cka(cka, run.layer_indices) if cka is not None else None,
    )


def _setting(config: Mapping[str, Any], dotted: str) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


RUN_SETTING_KEYS = ("model.name", "model.name_or_path", "dataset.name", "norms.name",
                    "extract.pooling", "extract.token_offset", "extract.max_length",
                    "extract.denoise.variance", "probe.name", "seed")


def run_settings_table(runs: Sequence[Run]) -> pd.DataFrame:
    """The settings that tell runs apart, one row per run."""
    rows = []
    for run in runs:
        row: dict[str, Any] = {"run": run.name, "path": str(run.path)}
        row.update({key: _setting(run.config, key) for key in RUN_SETTING_KEYS})
        counts = run.summary.get("counts") or {}
        row.update({f"counts.{k}": v for k, v in counts.items()})
        row["wandb"] = (run.summary.get("wandb") or {}).get("url") or (run.summary.get("wandb") or {}).get("mode")
        rows.append(row)
    return pd.DataFrame.from_records(rows).dropna(axis=1, how="all")


def run_logit_lens(runs: Sequence[Run], cfg: DictConfig) -> pd.DataFrame:
    """Top tokens per emotion for each run, loading each distinct model once."""
    tables = []
    models: dict[str, Any] = {}
    for run in runs:
        key = json.dumps(run.config.get("model"), sort_keys=True, default=str)
        if key not in models:
            models[key] = load_run_model(run)
        norm, unembedding = final_norm_and_unembedding(models[key])
        emotions = cfg.analyze.logit_lens_emotions
        tables.append(logit_lens_table(
            run, choose_layers(run, cfg.analyze.logit_lens_layers), norm, unembedding,
            models[key].tokenizer, int(cfg.analyze.logit_lens_top_k),
            list(emotions) if emotions else None,
        ))
    return pd.concat(tables, ignore_index=True)


def draw_curves(runs: Sequence[Run], fig_dir: Path) -> dict[str, list[tuple[str, Path]]]:
    """Layer curves of every run, by layer and by depth, and probe curves where probes ran."""
    curves = {run.name: run.layers for run in runs}
    drawn = {"layer_curves": [
        ("PC1-valence and PC2-arousal r by layer", figures.plot_layer_curves(
            curves, fig_dir / "layer_curves.png", x="layer", title="Valence and arousal geometry by layer")),
        ("The same curves by relative depth", figures.plot_layer_curves(
            curves, fig_dir / "layer_curves_depth.png", x="depth",
            title="Valence and arousal geometry by relative depth")),
    ], "probes": []}
    probe_runs = {run.name: run.layers for run in runs if run.has_probes}
    if probe_runs:
        drawn["probes"].append(("Probe accuracy and valence R^2 by layer",
                                figures.plot_probe_curves(probe_runs, fig_dir / "probe_curves.png")))
    if len(probe_runs) > 1:
        drawn["probes"].append(("The same by relative depth", figures.plot_probe_curves(
            probe_runs, fig_dir / "probe_curves_depth.png", x="depth")))
    return drawn


def draw_run_geometry(run: Run, geo: RunGeometry, fig_dir: Path, out_dir: Path) -> dict[str, list]:
    """One run's PC plane, cosine matrix and CKA map, with its clusters and CKA as CSV."""
    where = f"{run.name}, layer {geo.layer} (depth {run.depth(geo.layer):.2f})"
    caption = (f"PC1-PC2 plane: {where}; PC1-valence r {geo.plane.valence_r:.3f}, "
               f"PC2-arousal r {geo.plane.arousal_r:.3f}")
    drawn: dict[str, list] = {
        "pc_plane": [(caption, figures.plot_pc_plane(
            geo.plane.coords, run.emotions, run.valence, fig_dir / f"pc_plane_{run.slug}.png",
            geo.plane.explained, title=f"PC1-PC2 plane: {where}"))],
        "cosine": [(f"Cosine similarity: {where}", figures.plot_cosine_matrix(
            geo.clustering.cosine, run.emotions, geo.clustering.order,
            fig_dir / f"cosine_{run.slug}.png", geo.clustering.labels,
            title=f"Cosine similarity: {where}"))],
        "cka": [],
    }
    geo.clusters.to_csv(out_dir / f"clusters_{run.slug}.csv", index=False)
    if geo.cka is not None:
        pd.DataFrame(geo.cka, index=run.layer_indices, columns=run.layer_indices).to_csv(
            out_dir / f"cka_{run.slug}.csv", index_label="layer")
        drawn["cka"].append((f"Linear CKA between layers: {run.name}", figures.plot_cka_matrix(
            geo.cka, run.layer_indices, fig_dir / f"cka_{run.slug}.png",
            title=f"Linear CKA between layers: {run.name}")))
    return drawn


def compare_runs(runs: Sequence[Run], debiased: bool) -> dict[str, pd.DataFrame]:
    """Matched-depth CKA for every pair of runs, keyed 'A vs B'."""
    return {f"{a.name} vs {b.name}": matched_depth_cka(a, b, debiased)
            for i, a in enumerate(runs) for b in runs[i + 1:]}


def run_analysis(cfg: DictConfig, out_dir: str | Path) -> dict[str, Path]:
    """Analyse the runs named in cfg.runs; write figures, tables and reports under out_dir."""
    out_dir = Path(out_dir)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    sources = resolve_run_sources(list(cfg.runs or []), out_dir / "artifacts")
    names = list(cfg.names) if cfg.get("names") else [None] * len(sources)
    if len(names) != len(sources):
        raise EmovecError(f"names has {len(names)} entries for {len(sources)} runs")
    runs = [load_run(path, name, str(cfg.analyze.vectors)) for path, name in zip(sources, names, strict=True)]
    unique_names(runs)
    debiased = bool(cfg.analyze.cka_debiased)

    figs = draw_curves(runs, fig_dir)
    figs.update({"pc_plane": [], "cosine": [], "cka": []})
    geometry: dict[str, RunGeometry] = {}
    for run in runs:
        geometry[run.name] = analyse_run(run, cfg.analyze.plane_layer, int(cfg.analyze.kmeans_k),
                                         int(cfg.seed), bool(cfg.analyze.cka), debiased)
        for key, items in draw_run_geometry(run, geometry[run.name], fig_dir, out_dir).items():
            figs[key] += items

    cross = compare_runs(runs, debiased) if cfg.analyze.cka else {}
    if cross:
        pd.concat([t.assign(pair=p) for p, t in cross.items()]).to_csv(out_dir / "cka_runs.csv", index=False)
        figs["cka"].append(("Linear CKA between runs at matched relative depth",
                            figures.plot_cka_across_runs(cross, fig_dir / "cka_runs.png")))

    outputs: dict[str, Path] = {}
    lens = run_logit_lens(runs, cfg) if cfg.analyze.logit_lens else pd.DataFrame()
    if not lens.empty:
        outputs["logit_lens"] = out_dir / "logit_lens.csv"
        lens.to_csv(outputs["logit_lens"], index=False)

    best = best_layer_table(runs)
    best.to_csv(out_dir / "best_layers.csv", index=False)
    drift = {name: g.adjacent for name, g in geometry.items() if g.adjacent is not None}
    summary = text_summary(best, drift, cross)
    (out_dir / "summary.txt").write_text(summary + "\n", encoding="utf-8")
    print(summary)

    sections = report.build_sections(cfg, runs, geometry, figs, best, summary, lens,
                                     run_settings_table(runs))
    outputs["html"] = report.write_html_report(out_dir / str(cfg.report.html), str(cfg.report.title), sections)
    outputs["wandb_spec"] = report.share_on_wandb(cfg, runs, figs, best, out_dir)
    outputs.update({f"figure:{p.stem}": p for items in figs.values() for _, p in items})
    print(f"report: {outputs['html']}")
    return outputs
