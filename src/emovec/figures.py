"""Figures of emotion-vector geometry: layer curves, probe curves, the PC plane, cosine and CKA maps.

Every function draws one figure to a PNG file and returns its path. Figures are drawn on an Agg
canvas without pyplot, so they draw on headless nodes and leave no global figure state behind.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from emovec.errors import EmovecError

# Sofroniew et al. (Claude Sonnet 4.5): PC1 vs human valence r = 0.81, PC2 vs arousal r = 0.66.
CLAUDE_VALENCE_R = 0.81
CLAUDE_AROUSAL_R = 0.66

STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 9,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "figure.dpi": 110,
    "savefig.bbox": "tight",
}

X_LABELS = {"layer": "layer (0 = embeddings)", "depth": "relative depth (layer / number of layers)"}


def run_colours(names: Sequence[str]) -> dict[str, tuple]:
    """One distinct colour per run, stable for a given order of names."""
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _x_values(frame: pd.DataFrame, x: str, name: str) -> pd.Series:
    if x not in X_LABELS:
        raise EmovecError(f"x must be 'layer' or 'depth', got {x!r}")
    if x in frame.columns:
        return frame[x]
    if x == "depth" and "layer" in frame.columns and len(frame):
        # Without a depth column the deepest captured layer stands in for the layer count.
        return frame["layer"] / max(int(frame["layer"].max()), 1)
    raise EmovecError(f"run {name!r}: layer table has no column {x!r}")


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise EmovecError(f"run {name!r}: layer table lacks columns {missing}")


def _new_figure(**kwargs) -> Figure:
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path, dpi: float | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi or "figure")
    return path


@dataclass(frozen=True)
class Panel:
    """One metric panel: the layer-table column, its axis label, an optional reference line."""

    column: str
    ylabel: str
    reference: float | None = None
    reference_label: str | None = None
    chance_column: str | None = None


def _plot_metric_panels(
    curves: Mapping[str, pd.DataFrame],
    panels: Sequence[Panel],
    path: str | Path,
    x: str,
    title: str | None,
) -> Path:
    """Draw one panel per Panel, runs overlaid in their own colours."""
    if not curves:
        raise EmovecError("no runs to plot")
    colours = run_colours(list(curves))
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(figsize=(5.6 * len(panels), 4.2), layout="tight")
        axes = fig.subplots(1, len(panels), squeeze=False)
        for ax, panel in zip(axes[0], panels, strict=True):
            chance_drawn = False
            for name, frame in curves.items():
                _require_columns(frame, [panel.column], name)
                frame = frame.sort_values("layer") if "layer" in frame.columns else frame
                xs = _x_values(frame, x, name)
                ax.plot(xs, frame[panel.column], marker="o", markersize=3,
                        linewidth=1.6, color=colours[name], label=name)
                if panel.chance_column and panel.chance_column in frame.columns:
                    ax.plot(xs, frame[panel.chance_column], linestyle=":", linewidth=1.2,
                            color=colours[name], label=None if chance_drawn else "chance (dotted)")
                    chance_drawn = True
            if panel.reference is not None:
                ax.axhline(panel.reference, color="black", linestyle="--", linewidth=1.1,
                           label=panel.reference_label)
            ax.set_xlabel(X_LABELS[x])
            ax.set_ylabel(panel.ylabel)
            ax.legend(loc="best")
        if title:
            fig.suptitle(title)
        return _save(fig, path)


def plot_layer_curves(
    curves: Mapping[str, pd.DataFrame],
    path: str | Path,
    x: str = "layer",
    reference: bool = True,
    title: str | None = None,
) -> Path:
    """PC1-valence r and PC2-arousal r over layers, every run one colour, Claude's values dashed."""
    panels = [
        Panel("pc1_valence_r", "Pearson r, PC1 vs valence",
              CLAUDE_VALENCE_R if reference else None, f"Claude Sonnet 4.5 ({CLAUDE_VALENCE_R})"),
        Panel("pc2_arousal_r", "Pearson r, PC2 vs arousal",
              CLAUDE_AROUSAL_R if reference else None, f"Claude Sonnet 4.5 ({CLAUDE_AROUSAL_R})"),
    ]
    return _plot_metric_panels(curves, panels, path, x, title)


def has_probe_columns(frame: pd.DataFrame) -> bool:
    """True when the layer table carries probe scores (the run trained probes)."""
    return "probe_acc" in frame.columns and frame["probe_acc"].notna().any()


def plot_probe_curves(
    curves: Mapping[str, pd.DataFrame],
    path: str | Path,
    x: str = "layer",
) -> Path:
    """Probe accuracy and valence R^2 over layers, with chance levels dotted when recorded."""
    curves = {name: frame for name, frame in curves.items() if has_probe_columns(frame)}
    if not curves:
        raise EmovecError("no run has probe scores (probe_acc) to plot")
    panels = [
        Panel("probe_acc", "emotion probe accuracy (held out)", chance_column="probe_chance_acc"),
        Panel("probe_valence_r2", "valence probe R^2 (held out)",
              chance_column="probe_chance_valence_r2"),
    ]
    return _plot_metric_panels(curves, panels, path, x, "Linear probes over layers")


def plot_pc_plane(
    coords: np.ndarray,
    emotions: Sequence[str],
    valence: np.ndarray,
    path: str | Path,
    explained: Sequence[float] | None = None,
    title: str | None = None,
) -> Path:
    """Emotions in the PC1-PC2 plane, each point coloured by its valence and labelled."""
    coords = np.asarray(coords)
    size = 7 if len(emotions) <= 60 else 5.5
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(figsize=(11, 9) if len(emotions) > 60 else (8, 6.5))
        ax = fig.subplots()
        points = ax.scatter(coords[:, 0], coords[:, 1], c=valence, cmap="coolwarm_r", vmin=-1,
                            vmax=1, s=28, edgecolors="black", linewidths=0.3)
        for (px, py), label in zip(coords, emotions, strict=True):
            ax.annotate(label, (px, py), xytext=(2, 2), textcoords="offset points", fontsize=size,
                        alpha=0.85)
        fig.colorbar(points, ax=ax, label="valence (norms)")
        var = list(explained) if explained is not None else [float("nan")] * 2
        ax.set_xlabel(f"PC1 ({var[0]:.0%} of variance)")
        ax.set_ylabel(f"PC2 ({var[1]:.0%} of variance)")
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.axvline(0, color="grey", linewidth=0.6)
        ax.margins(0.12)  # room for the labels of the outermost points
        ax.set_title(title or "Emotion vectors in the PC1-PC2 plane")
        return _save(fig, path)


def plot_cosine_matrix(
    cosine: np.ndarray,
    emotions: Sequence[str],
    order: Sequence[int],
    path: str | Path,
    clusters: Sequence[int] | None = None,
    title: str | None = None,
) -> Path:
    """Cosine similarity of emotion vectors in clustering order, with a k-means cluster strip."""
    order = np.asarray(order)
    matrix = np.asarray(cosine)[np.ix_(order, order)]
    labels = [emotions[i] for i in order]
    n = len(labels)
    tick_size = max(3.0, min(9.0, 700 / max(n, 1)))
    side = min(16.0, max(6.0, n * 0.09))
    with matplotlib.rc_context(STYLE | {"axes.grid": False}):
        fig = _new_figure(figsize=(side + 1.8, side))
        grid = fig.add_gridspec(1, 3, width_ratios=[0.4, side, 0.35], wspace=0.02)
        strip_ax, ax, bar_ax = (fig.add_subplot(grid[0, i]) for i in range(3))
        image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.set_xticks(range(n), labels, rotation=90, fontsize=tick_size)
        ax.set_yticks([])
        ax.set_title(title or "Cosine similarity (hierarchical-clustering order)")
        fig.colorbar(image, cax=bar_ax, label="cosine similarity")
        if clusters is not None:
            strip = np.asarray(clusters)[order][:, None]
            strip_ax.imshow(strip, cmap="tab20", aspect="auto", interpolation="nearest")
            strip_ax.set_xticks([0], ["k-means"], rotation=90, fontsize=8)
        strip_ax.set_yticks(range(n), labels, fontsize=tick_size)
        strip_ax.tick_params(axis="y", length=0)
        # 171 names in small type need more pixels to stay legible when zoomed.
        return _save(fig, path, dpi=170 if n > 60 else None)


def plot_cka_matrix(
    matrix: np.ndarray,
    layers: Sequence[int],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Linear CKA between every pair of a run's layers."""
    n = len(layers)
    step = max(1, n // 16)
    with matplotlib.rc_context(STYLE | {"axes.grid": False}):
        fig = _new_figure(figsize=(6.8, 5.8))
        ax = fig.subplots()
        matrix = np.asarray(matrix)
        # Debiased CKA can dip below zero; plain CKA cannot.
        low = min(0.0, float(np.nanmin(matrix))) if matrix.size else 0.0
        image = ax.imshow(matrix, cmap="viridis", vmin=low, vmax=1, origin="lower",
                          interpolation="nearest")
        ticks = list(range(0, n, step))
        ax.set_xticks(ticks, [str(layers[i]) for i in ticks])
        ax.set_yticks(ticks, [str(layers[i]) for i in ticks])
        ax.set_xlabel("layer")
        ax.set_ylabel("layer")
        ax.set_title(title or "Linear CKA between layers")
        fig.colorbar(image, ax=ax, label="linear CKA")
        return _save(fig, path)


def plot_cka_across_runs(
    curves: Mapping[str, pd.DataFrame],
    path: str | Path,
) -> Path:
    """Linear CKA between pairs of runs at matched relative depth (columns depth_a, cka)."""
    if not curves:
        raise EmovecError("no run pairs to compare with CKA")
    colours = run_colours(list(curves))
    with matplotlib.rc_context(STYLE):
        fig = _new_figure(figsize=(7.5, 4.5))
        ax = fig.subplots()
        for name, frame in curves.items():
            ax.plot(frame["depth_a"], frame["cka"], marker="o", markersize=3, linewidth=1.6,
                    color=colours[name], label=name)
        low = min([0.0, *(float(frame["cka"].min()) for frame in curves.values())])
        ax.set_ylim(low, 1.02)
        ax.set_xlabel(X_LABELS["depth"])
        ax.set_ylabel("linear CKA (shared emotions)")
        ax.set_title("Geometry across runs at matched relative depth")
        ax.legend(loc="best")
        return _save(fig, path)
