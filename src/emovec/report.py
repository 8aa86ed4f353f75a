"""Share an analysis: one self-contained HTML file, and a W&B Report over the runs' W&B runs.

The W&B Report is first built as a plain-dict spec (saved as JSON, testable offline), then turned
into `wandb_workspaces.reports.v2` objects and saved only when W&B is online.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from emovec.errors import EmovecError

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- HTML


@dataclass
class Section:
    """One titled part of the HTML report: text, figures and tables, in that order."""

    id: str
    title: str
    text: str = ""
    figures: list[tuple[str, Path]] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    preformatted: str = ""


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.7rem; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2rem; margin-top: 2.2rem; }
nav ul { columns: 3; } figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: .9rem; color: #555; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0 1rem; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
.table-wrap { overflow-x: auto; } pre { background: #f7f7f7; padding: .8rem; overflow-x: auto; }
caption { text-align: left; font-weight: 600; padding: .3rem 0; }
"""


def image_data_uri(path: Path) -> str:
    """A PNG as a data: URI, so the HTML needs no other file and no network."""
    data = Path(path).read_bytes()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _table_html(caption: str, frame: pd.DataFrame) -> str:
    body = frame.to_html(index=False, escape=True, float_format=lambda v: f"{v:.3f}",
                         na_rep="", border=0)
    opening_end = body.index(">") + 1  # the caption must be the table's first child
    body = f"{body[:opening_end]}<caption>{html.escape(caption)}</caption>{body[opening_end:]}"
    return f'<div class="table-wrap">{body}</div>'


def _section_html(section: Section) -> str:
    parts = [f'<section id="{html.escape(section.id)}">', f"<h2>{html.escape(section.title)}</h2>"]
    if section.text:
        parts += [f"<p>{html.escape(p)}</p>" for p in section.text.split("\n\n")]
    if section.preformatted:
        parts.append(f"<pre>{html.escape(section.preformatted)}</pre>")
    for caption, path in section.figures:
        parts.append(
            f'<figure><img src="{image_data_uri(path)}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        )
    parts += [_table_html(caption, frame) for caption, frame in section.tables]
    parts.append("</section>")
    return "\n".join(parts)


def render_html_report(title: str, sections: Sequence[Section]) -> str:
    """The whole report as one HTML string: inline CSS, embedded images, no scripts or links out."""
    nav = "".join(f'<li><a href="#{html.escape(s.id)}">{html.escape(s.title)}</a></li>'
                  for s in sections)
    body = "\n".join(_section_html(s) for s in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<nav><ul>{nav}</ul></nav>\n{body}\n</body>\n</html>\n"
    )


def write_html_report(path: str | Path, title: str, sections: Sequence[Section]) -> Path:
    path = Path(path)
    path.write_text(render_html_report(title, sections), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- W&B Report spec

# (panel id, title, x column, y column): layers.csv columns, which train.py logs to each run.
LINE_PANELS = (
    ("pc1_valence_r_by_layer", "PC1 vs valence r over layers", "layer", "pc1_valence_r"),
    ("pc2_arousal_r_by_layer", "PC2 vs arousal r over layers", "layer", "pc2_arousal_r"),
    ("pc1_valence_r_by_depth", "PC1 vs valence r over relative depth", "depth", "pc1_valence_r"),
    ("pc2_arousal_r_by_depth", "PC2 vs arousal r over relative depth", "depth", "pc2_arousal_r"),
)
PROBE_PANELS = (
    ("probe_acc_by_layer", "Emotion probe accuracy over layers", "layer", "probe_acc"),
    ("probe_valence_r2_by_layer", "Valence probe R^2 over layers", "layer", "probe_valence_r2"),
)


@dataclass
class WandbRunRef:
    """Where one analysed run lives in W&B."""

    name: str
    entity: str | None
    project: str | None
    run_id: str | None


def wandb_online(requested: str = "auto") -> bool:
    """True when W&B resolves to online: not switched off, an API key, and a reachable host."""
    from emovec.tracking import resolve_mode

    return resolve_mode(requested) == "online"


def wandb_ref_from_summary(name: str, wandb_info: Mapping[str, Any] | None) -> WandbRunRef:
    """Read entity, project and run id from summary.json's "wandb" block (entity from its URL)."""
    info = dict(wandb_info or {})
    entity = info.get("entity")
    url = info.get("url") or ""
    # A run URL reads https://HOST/ENTITY/PROJECT/runs/RUN_ID.
    parts = [p for p in url.split("/") if p]
    if not entity and "runs" in parts and parts.index("runs") >= 3:
        entity = parts[parts.index("runs") - 2]
    return WandbRunRef(name, entity, info.get("project"), info.get("run_id"))


def _runsets(refs: Sequence[WandbRunRef]) -> list[dict[str, Any]]:
    """One run set per W&B project, filtered to the analysed runs' ids."""
    groups: dict[tuple[str | None, str | None], list[WandbRunRef]] = {}
    for ref in refs:
        if ref.run_id:
            groups.setdefault((ref.entity, ref.project), []).append(ref)
    runsets = []
    for (entity, project), members in groups.items():
        ids = ", ".join(repr(r.run_id) for r in members)
        runsets.append({"entity": entity, "project": project, "name": f"{project} runs",
                        "filters": f"Metric('ID') in [{ids}]",
                        "runs": {r.run_id: r.name for r in members}})
    return runsets


def _line_panel(panel_id: str, title: str, x: str, y: str, prefix: str) -> dict[str, Any]:
    # train.py logs each layer's row as prefix + column, stepped by the unprefixed "layer".
    x_key = x if x == "layer" else f"{prefix}{x}"
    return {"id": panel_id, "type": "line_plot", "title": title, "x": x_key, "y": [f"{prefix}{y}"]}


def build_report_spec(
    title: str,
    summary_markdown: str,
    settings_yaml: str,
    runs: Sequence[WandbRunRef],
    media_keys: Mapping[str, Sequence[str]],
    analysis_run: WandbRunRef | None = None,
    with_probes: bool = True,
    metric_prefix: str = "layer/",
    entity: str | None = None,
    project: str | None = None,
) -> dict[str, Any]:
    """The W&B Report as plain dicts: line panels over the runs, media panels of the figures."""
    first = next((r for r in runs if r.project), None)
    entity = entity or (first.entity if first else None)
    project = project or (first.project if first else None)
    run_sets = _runsets(runs)
    lines = [_line_panel(*panel, metric_prefix) for panel in LINE_PANELS]
    blocks: list[dict[str, Any]] = [
        {"type": "h1", "text": title},
        {"type": "markdown", "text": summary_markdown},
        {"type": "h2", "text": "Valence and arousal over layers"},
        {"type": "panel_grid", "runsets": run_sets, "panels": lines},
    ]
    if with_probes:
        blocks += [
            {"type": "h2", "text": "Linear probes"},
            {"type": "panel_grid", "runsets": run_sets,
             "panels": [_line_panel(*panel, metric_prefix) for panel in PROBE_PANELS]},
        ]
    media = [{"id": f"figure_{key}", "type": "media_browser", "title": key.replace("_", " "),
              "media_keys": list(keys)} for key, keys in media_keys.items()]
    blocks += [
        {"type": "h2", "text": "Geometry figures"},
        {"type": "panel_grid", "runsets": _runsets([analysis_run]) if analysis_run else [],
         "panels": media},
        {"type": "h2", "text": "Settings"},
        {"type": "code", "language": "yaml", "text": settings_yaml},
    ]
    return {"title": title, "entity": entity, "project": project,
            "description": "emovec: emotion-vector geometry across layers and runs",
            "blocks": blocks}


def spec_panel_ids(spec: Mapping[str, Any]) -> list[str]:
    """Every panel id in a report spec, in order."""
    return [panel["id"] for block in spec["blocks"] if block["type"] == "panel_grid"
            for panel in block["panels"]]


def save_report_spec(spec: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(spec, indent=2), encoding="utf-8")
    return path


def to_wandb_report(spec: Mapping[str, Any]):
    """Turn a spec into a `wandb_workspaces` Report object (not saved)."""
    try:
        import wandb_workspaces.reports.v2 as wr
    except ImportError as exc:
        raise EmovecError("the W&B Report needs the wandb-workspaces package") from exc
    if not spec.get("entity") or not spec.get("project"):
        raise EmovecError("the W&B Report needs an entity and a project (report.entity, report.project)")

    def panel(p: Mapping[str, Any]):
        if p["type"] == "line_plot":
            return wr.LinePlot(title=p["title"], x=p["x"], y=list(p["y"]))
        return wr.MediaBrowser(title=p["title"], media_keys=list(p["media_keys"]))

    def block(b: Mapping[str, Any]):
        kind = b["type"]
        if kind == "h1":
            return wr.H1(b["text"])
        if kind == "h2":
            return wr.H2(b["text"])
        if kind == "markdown":
            return wr.MarkdownBlock(b["text"])
        if kind == "code":
            return wr.CodeBlock(b["text"], language=b.get("language", "yaml"))
        if kind == "panel_grid":
            runsets = [wr.Runset(entity=rs["entity"] or spec["entity"],
                                 project=rs["project"] or spec["project"],
                                 name=rs["name"], filters=rs["filters"]) for rs in b["runsets"]]
            return wr.PanelGrid(runsets=runsets, panels=[panel(p) for p in b["panels"]])
        raise EmovecError(f"report spec: unknown block type {kind!r}")

    return wr.Report(project=spec["project"], entity=spec["entity"], title=spec["title"],
                     description=spec.get("description", ""),
                     blocks=[block(b) for b in spec["blocks"]], width="fluid")


def publish_wandb_report(spec: Mapping[str, Any]) -> str:
    """Save the report to W&B and return its URL."""
    report = to_wandb_report(spec)
    report.save()
    return str(report.url)


# ----------------------------------------------------------------------------- putting it together


def _visible_token(token: str) -> str:
    return token.replace(" ", "\u2423").replace("\n", "\\n")


def logit_lens_wide(table: pd.DataFrame) -> pd.DataFrame:
    """One row per run, layer and emotion, the top tokens joined in rank order."""
    if table.empty:
        return table
    ordered = table.sort_values(["run", "layer", "rank"], kind="stable")
    return (ordered.assign(token=ordered["token"].map(_visible_token))
            .groupby(["run", "layer", "emotion"], sort=False)["token"]
            .agg(" | ".join).reset_index().rename(columns={"token": "top tokens"}))


def summary_markdown(best: pd.DataFrame) -> str:
    """The best-layer table as Markdown, for the W&B Report."""
    head = "| run | PC1-valence r | layer | depth | PC2-arousal r | layer |\n|---|---|---|---|---|---|"
    rows = [f"| {r['run']} | {r['best_valence_r']:.3f} | {r['best_valence_layer']} | "
            f"{r['best_valence_depth']:.2f} | {r['best_arousal_r']:.3f} | {r['best_arousal_layer']} |"
            for _, r in best.iterrows()]
    return "\n".join([head, *rows])


# Every report has all of these, in this order; an empty one says why.
SECTION_IDS = ("summary", "settings", "layer-curves", "probes", "pc-plane", "cosine", "cka",
               "logit-lens", "runs")


def build_sections(cfg: DictConfig, runs: Sequence[Any], geometry: Mapping[str, Any],
                   figs: Mapping[str, list], best: pd.DataFrame, summary: str,
                   lens: pd.DataFrame, run_settings: pd.DataFrame) -> list[Section]:
    """The report's sections, always all of them; an empty one says why it is empty."""
    cluster_tables = [(f"k-means clusters (k={int(g.clusters['cluster'].max())}): {name}, layer {g.layer}",
                       g.clusters) for name, g in geometry.items()]
    drift_tables = [(f"CKA of adjacent layers: {name}", g.adjacent) for name, g in geometry.items()
                    if g.adjacent is not None]
    analyze_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    return [
        Section("summary", "Best-layer summary", preformatted=summary,
                tables=[("Peak layers per run", best)]),
        Section("settings", "Settings", text="The analysis settings, then each run's own.",
                preformatted=analyze_yaml, tables=[("Run settings", run_settings)]),
        Section("layer-curves", "Valence and arousal over layers",
                text="Pearson r of PC1 with valence and of PC2 with arousal at every captured layer "
                     "(0 = embeddings); dashed: Claude Sonnet 4.5 (Sofroniew et al.).",
                figures=figs["layer_curves"]),
        Section("probes", "Linear probes",
                text="" if figs["probes"] else "No run trained probes (probe=none).",
                figures=figs["probes"]),
        Section("pc-plane", "Emotions in the PC1-PC2 plane", figures=figs["pc_plane"]),
        Section("cosine", "Cosine similarity and clusters",
                text="Rows and columns follow average-linkage clustering; the strip on the left "
                     "gives each emotion's k-means cluster.",
                figures=figs["cosine"], tables=cluster_tables),
        Section("cka", "Linear CKA across layers and runs",
                text=("CKA was switched off (analyze.cka=false)." if not cfg.analyze.cka else
                      "Debiased linear CKA (unbiased HSIC)." if cfg.analyze.cka_debiased else
                      "Linear CKA over the emotion vectors. With fewer emotions than hidden units it "
                      "reads high even for unrelated vectors; analyze.cka_debiased=true corrects that."),
                figures=figs["cka"], tables=drift_tables),
        Section("logit-lens", "Logit lens",
                text="Top tokens each emotion vector promotes through the final norm and the "
                     "unembedding." if not lens.empty else
                     "Not run (analyze.logit_lens=false).",
                tables=[("Top tokens", logit_lens_wide(lens))] if not lens.empty else []),
        Section("runs", "Per-run layer tables",
                tables=[(f"{run.name} ({run.path})", run.layers) for run in runs]),
    ]


def share_on_wandb(cfg: DictConfig, runs: Sequence[Any], figs: Mapping[str, list],
                   best: pd.DataFrame, out_dir: Path) -> Path:
    """Build and save the W&B Report spec; when online, log the figures and publish the report.

    W&B trouble is reported and never fails the analysis.
    """
    mode = str(cfg.report.wandb)
    refs = [wandb_ref_from_summary(run.name, run.summary.get("wandb")) for run in runs]
    media_keys = {section: [f"analysis/{path.stem}" for _, path in items]
                  for section, items in figs.items() if items}
    online = wandb_online(mode)
    analysis_ref = None
    if online:
        try:
            analysis_ref = _log_figures(cfg, refs, figs, out_dir)
        except Exception as exc:  # noqa: BLE001 - W&B trouble never kills the analysis
            log.warning("W&B: could not log the figures (%s)", exc)
    spec = build_report_spec(
        str(cfg.report.title), summary_markdown(best), OmegaConf.to_yaml(cfg, resolve=True),
        refs, media_keys, analysis_ref, with_probes=any(r.has_probes for r in runs),
        metric_prefix=str(cfg.report.metric_prefix or ""), entity=cfg.report.entity,
        project=cfg.report.project,
    )
    path = save_report_spec(spec, out_dir / "wandb_report.json")
    if online:
        try:
            print(f"W&B report: {publish_wandb_report(spec)}")
        except Exception as exc:  # noqa: BLE001 - as above
            log.warning("W&B: could not publish the report (%s); its spec is in %s", exc, path)
    return path


def _log_figures(cfg: DictConfig, refs: Sequence[Any], figs: Mapping[str, list], out_dir: Path):
    """Log every figure to a new W&B run of job type 'analysis' and return where it lives."""
    import wandb

    first = next((r for r in refs if r.project), None)
    project = cfg.report.project or (first.project if first else None) or "emovec"
    entity = cfg.report.entity or (first.entity if first else None)
    run = wandb.init(project=project, entity=entity, job_type="analysis", dir=str(out_dir),
                     config=OmegaConf.to_container(cfg, resolve=True), reinit="finish_previous")
    try:
        run.log({f"analysis/{path.stem}": wandb.Image(str(path), caption=caption)
                 for items in figs.values() for caption, path in items})
        return WandbRunRef("analysis", run.entity, run.project, run.id)
    finally:
        run.finish()
