"""figures: each plot writes a PNG and draws what it says (inspected before saving)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from emovec import figures
from emovec.errors import EmovecError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def layer_table(num_layers: int, offset: float = 0.0, probes: bool = True) -> pd.DataFrame:
    layers = np.arange(num_layers + 1)
    table = pd.DataFrame({
        "layer": layers,
        "depth": layers / num_layers,
        "pc1_valence_r": 0.4 + 0.3 * np.sin(layers / num_layers * np.pi) + offset,
        "pc2_arousal_r": 0.1 + 0.02 * layers,
    })
    if probes:
        table["probe_acc"] = 0.05 + 0.04 * layers
        table["probe_valence_r2"] = 0.03 * layers
        table["probe_chance_acc"] = 1 / 171
        table["probe_chance_valence_r2"] = 0.0
    return table


@pytest.fixture
def drawn(monkeypatch):
    """Keep every figure the module saves, to check what was drawn."""
    kept: list[Figure] = []
    save = figures._save

    def keep(fig, path, **kwargs):
        kept.append(fig)
        return save(fig, path, **kwargs)

    monkeypatch.setattr(figures, "_save", keep)
    return kept


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


def test_layer_curves_draw_every_run_and_claudes_reference(tmp_path, drawn):
    curves = {"smollm2 / bundled": layer_table(30), "gemma3 / bundled": layer_table(18, 0.1)}
    path = figures.plot_layer_curves(curves, tmp_path / "curves.png", title="t")
    assert_png(path)
    valence_ax, arousal_ax = drawn[0].axes
    for ax, ref in ((valence_ax, 0.81), (arousal_ax, 0.66)):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(curves) <= set(lines)
        dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
        assert len(dashed) == 1 and list(dashed[0].get_ydata()) == [ref, ref]
        assert lines["smollm2 / bundled"].get_color() != lines["gemma3 / bundled"].get_color()
        assert ax.get_xlabel().startswith("layer")
    np.testing.assert_allclose(valence_ax.get_lines()[1].get_ydata(), curves["gemma3 / bundled"]["pc1_valence_r"])


def test_layer_curves_by_depth_and_without_reference(tmp_path, drawn):
    table = layer_table(8).drop(columns="depth")  # depth falls back to layer / deepest layer
    figures.plot_layer_curves({"a": table}, tmp_path / "d.png", x="depth", reference=False)
    ax = drawn[0].axes[0]
    np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), np.arange(9) / 8)
    assert not [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert "relative depth" in ax.get_xlabel()


def test_layer_curves_reject_bad_input(tmp_path):
    with pytest.raises(EmovecError, match="pc2_arousal_r"):
        figures.plot_layer_curves({"a": layer_table(4).drop(columns="pc2_arousal_r")}, tmp_path / "x.png")
    with pytest.raises(EmovecError, match="'layer' or 'depth'"):
        figures.plot_layer_curves({"a": layer_table(4)}, tmp_path / "x.png", x="step")
    with pytest.raises(EmovecError, match="no runs"):
        figures.plot_layer_curves({}, tmp_path / "x.png")


def test_probe_curves_skip_runs_without_probes(tmp_path, drawn):
    curves = {"with": layer_table(6), "without": layer_table(6, probes=False)}
    assert_png(figures.plot_probe_curves(curves, tmp_path / "p.png"))
    acc_ax, r2_ax = drawn[0].axes
    labels = [line.get_label() for line in acc_ax.get_lines()]
    assert "with" in labels and "without" not in labels
    assert "chance (dotted)" in labels
    assert "accuracy" in acc_ax.get_ylabel() and "R^2" in r2_ax.get_ylabel()
    with pytest.raises(EmovecError, match="probe"):
        figures.plot_probe_curves({"without": layer_table(6, probes=False)}, tmp_path / "q.png")


def test_pc_plane_labels_every_emotion(tmp_path, drawn):
    rng = np.random.default_rng(0)
    emotions = [f"e{i}" for i in range(20)]
    figures.plot_pc_plane(rng.normal(size=(20, 2)), emotions, rng.uniform(-1, 1, 20),
                          tmp_path / "plane.png", explained=[0.26, 0.15])
    assert_png(tmp_path / "plane.png")
    ax = drawn[0].axes[0]
    assert sorted(t.get_text() for t in ax.texts) == sorted(emotions)
    assert ax.get_xlabel() == "PC1 (26% of variance)"


def test_cosine_matrix_is_drawn_in_the_given_order(tmp_path, drawn):
    cosine = np.array([[1.0, 0.2, 0.9], [0.2, 1.0, 0.1], [0.9, 0.1, 1.0]])
    figures.plot_cosine_matrix(cosine, ["a", "b", "c"], [0, 2, 1], tmp_path / "cos.png", clusters=[0, 1, 0])
    assert_png(tmp_path / "cos.png")
    strip_ax, ax = drawn[0].axes[:2]
    np.testing.assert_allclose(ax.images[0].get_array(), cosine[np.ix_([0, 2, 1], [0, 2, 1])])
    assert [t.get_text() for t in strip_ax.get_yticklabels()] == ["a", "c", "b"]


def test_cka_figures(tmp_path):
    matrix = np.array([[1.0, 0.5], [0.5, 1.0]])
    assert_png(figures.plot_cka_matrix(matrix, [0, 1], tmp_path / "cka.png"))
    frame = pd.DataFrame({"depth_a": [0, 0.5, 1], "cka": [0.9, 0.7, -0.1]})
    assert_png(figures.plot_cka_across_runs({"a vs b": frame}, tmp_path / "runs.png"))
