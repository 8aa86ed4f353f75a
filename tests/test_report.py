"""report: a self-contained HTML page, and the W&B Report spec built and checked offline."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pandas as pd
import pytest

from emovec import figures, report
from emovec.errors import EmovecError


@pytest.fixture
def figure(tmp_path):
    table = pd.DataFrame({"layer": [0, 1, 2], "depth": [0, 0.5, 1], "pc1_valence_r": [0.2, 0.7, 0.5],
                          "pc2_arousal_r": [0.1, 0.3, 0.2]})
    return figures.plot_layer_curves({"run": table}, tmp_path / "curves.png")


def test_html_embeds_figures_and_needs_no_network(tmp_path, figure):
    sections = [
        report.Section("summary", "Summary", text="best <layer>", tables=[("t", pd.DataFrame({"a": [1.23456]}))]),
        report.Section("figs", "Figures", figures=[("layer curves", figure)]),
    ]
    page = report.write_html_report(tmp_path / "r.html", "Title & more", sections).read_text()
    assert '<section id="summary">' in page and '<section id="figs">' in page
    assert "best &lt;layer&gt;" in page and "Title &amp; more" in page  # escaped
    assert "1.235" in page and "<caption>t</caption>" in page
    uris = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(uris) == 1 and base64.b64decode(uris[0]) == figure.read_bytes()
    # Nothing to fetch: no scripts, stylesheets, or remote sources.
    assert "<script" not in page and "<link" not in page
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_every_section_is_built_even_when_empty(tmp_path, figure):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"analyze": {"cka": False, "cka_debiased": False}, "seed": 0})
    figs = {"layer_curves": [("c", figure)], "probes": [], "pc_plane": [], "cosine": [], "cka": []}
    sections = report.build_sections(cfg, [], {}, figs, pd.DataFrame(), "summary", pd.DataFrame(),
                                      pd.DataFrame())
    assert tuple(s.id for s in sections) == report.SECTION_IDS
    by_id = {s.id: s for s in sections}
    assert "probe=none" in by_id["probes"].text
    assert "analyze.logit_lens=false" in by_id["logit-lens"].text
    assert "analyze.cka=false" in by_id["cka"].text


def refs():
    return [
        report.WandbRunRef("smollm2", "me", "emovec", "r1"),
        report.WandbRunRef("gemma3", "me", "emovec", "r2"),
        report.WandbRunRef("other", "me", "elsewhere", "r3"),
        report.WandbRunRef("offline", None, None, None),
    ]


def spec(with_probes=True):
    return report.build_report_spec(
        "emovec analysis", "| run |", "seed: 0\n", refs(),
        {"layer_curves": ["analysis/layer_curves", "analysis/layer_curves_depth"],
         "pc_plane": ["analysis/pc_plane_a"], "cosine": ["analysis/cosine_a"], "cka": ["analysis/cka_a"]},
        analysis_run=report.WandbRunRef("analysis", "me", "emovec", "an1"), with_probes=with_probes)


def test_report_spec_has_every_panel():
    built = spec()
    assert report.spec_panel_ids(built) == [
        "pc1_valence_r_by_layer", "pc2_arousal_r_by_layer", "pc1_valence_r_by_depth",
        "pc2_arousal_r_by_depth", "probe_acc_by_layer", "probe_valence_r2_by_layer",
        "figure_layer_curves", "figure_pc_plane", "figure_cosine", "figure_cka"]
    assert (built["entity"], built["project"]) == ("me", "emovec")
    assert [b["type"] for b in built["blocks"]][:2] == ["h1", "markdown"]
    assert any(b["type"] == "code" and b["text"] == "seed: 0\n" for b in built["blocks"])
    grid = next(b for b in built["blocks"] if b["type"] == "panel_grid")
    line = grid["panels"][2]
    assert (line["x"], line["y"]) == ("layer/depth", ["layer/pc1_valence_r"])  # as tracking.py logs them
    assert grid["panels"][0]["x"] == "layer"
    # One run set per project, each filtered to its runs; the offline run has none.
    assert [(rs["project"], rs["filters"]) for rs in grid["runsets"]] == [
        ("emovec", "Metric('ID') in ['r1', 'r2']"), ("elsewhere", "Metric('ID') in ['r3']")]
    media = [b for b in built["blocks"] if b["type"] == "panel_grid"][-1]
    assert media["runsets"][0]["filters"] == "Metric('ID') in ['an1']"
    assert media["panels"][0]["media_keys"] == ["analysis/layer_curves", "analysis/layer_curves_depth"]
    assert "probe_acc_by_layer" not in report.spec_panel_ids(spec(with_probes=False))


def test_report_spec_round_trips_through_json(tmp_path):
    path = report.save_report_spec(spec(), tmp_path / "spec.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(spec()))


def test_spec_becomes_a_wandb_workspaces_report():
    wr = pytest.importorskip("wandb_workspaces.reports.v2")
    built = spec()
    made = report.to_wandb_report(built)
    assert isinstance(made, wr.Report)
    assert len(made.blocks) == len(built["blocks"])
    grids = [b for b in made.blocks if isinstance(b, wr.PanelGrid)]
    assert sum(len(g.panels) for g in grids) == len(report.spec_panel_ids(built))
    assert isinstance(grids[0].panels[0], wr.LinePlot) and isinstance(grids[-1].panels[0], wr.MediaBrowser)
    assert grids[0].runsets[1].project == "elsewhere"


def test_spec_without_a_project_cannot_be_published():
    with pytest.raises(EmovecError, match="entity and a project"):
        report.to_wandb_report(report.build_report_spec("t", "", "", [], {}))


def test_entity_comes_from_the_run_url():
    ref = report.wandb_ref_from_summary("a", {"url": "https://wandb.ai/lab/emovec/runs/abc123",
                                              "project": "emovec", "run_id": "abc123"})
    assert (ref.entity, ref.project, ref.run_id) == ("lab", "emovec", "abc123")
    assert report.wandb_ref_from_summary("b", None) == report.WandbRunRef("b", None, None, None)


def test_offline_mode_is_not_online(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert not report.wandb_online()


def test_logit_lens_wide_joins_tokens_in_rank_order():
    table = pd.DataFrame({"run": ["r"] * 3, "layer": [2] * 3, "emotion": ["joy"] * 3, "rank": [2, 1, 3],
                          "token_id": [5, 4, 6], "token": [" glad", "happy", "\n"], "logit": np.ones(3)})
    wide = report.logit_lens_wide(table)
    assert wide.loc[0, "top tokens"] == "happy | \u2423glad | \\n"


def _share(tmp_path, figure, monkeypatch, publish):
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"report": {"wandb": "auto", "title": "t", "entity": None, "project": None,
                                       "metric_prefix": "layer/"}, "seed": 0})
    runs = [SimpleNamespace(name="a", has_probes=False,
                            summary={"wandb": {"project": "emovec", "run_id": "r1",
                                               "url": "https://wandb.ai/lab/emovec/runs/r1"}})]
    best = pd.DataFrame({"run": ["a"], "best_valence_r": [0.5], "best_valence_layer": [3],
                         "best_valence_depth": [0.5], "best_arousal_r": [0.2], "best_arousal_layer": [1]})
    monkeypatch.setattr(report, "wandb_online", lambda mode="auto": True)
    monkeypatch.setattr(report, "_log_figures",
                        lambda *a: report.WandbRunRef("analysis", "lab", "emovec", "an1"))
    monkeypatch.setattr(report, "publish_wandb_report", publish)
    return report.share_on_wandb(cfg, runs, {"layer_curves": [("c", figure)]}, best, tmp_path)


def test_online_sharing_publishes_the_saved_spec(tmp_path, figure, monkeypatch, capsys):
    published = []
    path = _share(tmp_path, figure, monkeypatch, lambda spec: published.append(spec) or "https://report")
    saved = json.loads(path.read_text())
    assert published == [saved]
    assert saved["entity"] == "lab"
    assert "W&B report: https://report" in capsys.readouterr().out


def test_wandb_failure_never_fails_the_analysis(tmp_path, figure, monkeypatch, caplog):
    def broken(spec):
        raise RuntimeError("502 from W&B")

    path = _share(tmp_path, figure, monkeypatch, broken)
    assert path.is_file()
    assert "502 from W&B" in caplog.text


@pytest.mark.slow
def test_figures_log_to_an_offline_analysis_run(tmp_path, figure, monkeypatch):
    from omegaconf import OmegaConf

    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = OmegaConf.create({"report": {"entity": None, "project": "emovec-test"}})
    ref = report._log_figures(cfg, [], {"layer_curves": [("c", figure)]}, tmp_path)
    assert ref.project == "emovec-test" and ref.run_id
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{ref.run_id}"))
    assert len(runs) == 1 and list(runs[0].rglob("*.png"))
