"""`RUN/report.html`: one self-contained page about a run (inline CSS and SVG charts, thumbnails as data
URIs; no script, no network), written at the end of every run and by `python -m pipeline report RUN`.

It shows the funnel (rows in, kept, dropped and failed by reason, per stage: chart and table), the time
and throughput of each stage, a histogram of every numeric column a stage decides on or scores, with
the configured thresholds drawn (stages declare them: `Stage.thresholds()`), examples of the rows each
video stage dropped, and a gallery of clips: kept ones and a few per drop or error reason, each with
frames from the clip, its words on a timeline, its scores and its reason.

Reads the run's markers (the summary), `config.yaml` (thresholds) and the manifests: only the numeric
columns for the histograms, and whole rows only of the parts that hold the gallery's samples.
"""
from __future__ import annotations

import html
import logging
import random

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from pipeline import report_charts as charts
from pipeline.report_gallery import Card, add_thumbnails, card_html, pick_cards
from pipeline.stage import Stage
from pipeline.store import RunStore
from pipeline.summary import summarize
from pipeline.worker import reason_codes

log = logging.getLogger(__name__)

CLIP_COLUMNS = {"clip_id", "start", "end"}
CARD_COLUMNS = CLIP_COLUMNS | {"words", "media_path"}
EXAMPLE_COLUMNS = ("id", "title", "url", "duration", "reason")


def run_stages(store: RunStore) -> dict[str, Stage | None]:
    """The run's stages with the configs it ran with (None for a stage whose config no longer loads)."""
    from pipeline.config import ConfigError, build_dataclass, stage_class

    if not store.exists(store.path("config.yaml")):      # a run of an older version: no thresholds
        return {name: None for name in store.read_json("run.json").get("stages", [])}
    with store.fs.open(store.path("config.yaml"), "rb") as f:
        raw = yaml.safe_load(f.read()) or {}
    out: dict[str, Stage | None] = {}
    for name in raw.get("stages", []):
        try:
            cls = stage_class(name)
            out[name] = cls(build_dataclass(cls.Config, raw.get(name) or {}, name))
        except ConfigError:
            out[name] = None
    return out


def manifest_schema(store: RunStore, stage: str) -> pa.Schema | None:
    parts = store.done_parts(stage)
    if not parts:
        return None
    with store.fs.open(store.manifest_path(stage, parts[0]), "rb") as f:
        return pq.ParquetFile(f).schema_arrow


def histograms(store: RunStore, stages: dict[str, Stage | None]) -> list[dict]:
    """Per stage, each numeric column it scores or decides on: all its rows' values and the thresholds."""
    out = []
    for name, stage in stages.items():
        schema = manifest_schema(store, name)
        if stage is None or schema is None:
            continue
        limits = stage.thresholds()
        columns = [c for c in dict.fromkeys([*limits, *stage.score_columns()])
                   if schema.get_field_index(c) >= 0 and
                   (pa.types.is_floating(schema.field(c).type) or pa.types.is_integer(schema.field(c).type))]
        table = store.read_stage(name, columns) if columns else None
        for column in columns:
            values = [float(v) for v in pc.drop_null(table.column(column)).to_pylist()]
            out.append({"stage": name, "column": column, "values": values,
                        "thresholds": tuple(float(t) for t in limits.get(column, ()))})
    return out


def resolve_media(store: RunStore, path: str | None) -> str | None:
    """A manifest's media path as a local file for ffmpeg (None on a remote run folder)."""
    if not path or not store.is_local:
        return None
    return path if path.startswith("/") else store.path(path)


def sample_rows(store: RunStore, stage: str, quota: dict[tuple[str, str], int], seed: int = 0,
                kept_ids: set[str] | None = None) -> list[dict]:
    """Whole rows meeting `quota` ({(status, reason code): rows}; ok rows only among `kept_ids` when
    given), reading parts in a shuffled order until every quota is met (a large run reads a few parts);
    each with its `reason_code`, as the summary counts it."""
    parts = store.done_parts(stage)
    random.Random(seed).shuffle(parts)
    left, rows = dict(quota), []
    for part in parts:
        if not any(left.values()):
            break
        table = store.read_manifest(stage, part)
        if table.num_rows == 0:
            continue
        for row, code in zip(table.to_pylist(), reason_codes(table).to_pylist()):
            key = (row["status"], code)
            if kept_ids is not None and key[0] == "ok" and row.get("clip_id") not in kept_ids:
                continue
            if left.get(key, 0) > 0:
                left[key] -= 1
                rows.append({**row, "reason_code": code})
    return rows


def gallery(store: RunStore, stages: dict[str, Stage | None], summary: dict, per_reason: int = 3,
            kept: int = 6) -> tuple[list[Card], list[dict]]:
    """Clip cards (clips the last clip stage kept, shown from the last stage whose rows still carry words
    and media, and samples of every drop/error reason of each clip stage) and examples of the rows the
    video stages dropped or failed."""
    schemas = {n: manifest_schema(store, n) for n in stages}
    clip_stages = [n for n, s in schemas.items() if s is not None and CLIP_COLUMNS <= set(s.names)]
    card_stages = [n for n in clip_stages if CARD_COLUMNS <= set(schemas[n].names)]
    kept_ids = None
    if clip_stages and card_stages and clip_stages[-1] != card_stages[-1]:
        final = store.read_stage(clip_stages[-1], ["clip_id", "status"])
        kept_ids = set(pc.filter(final.column("clip_id"), pc.equal(final.column("status"), "ok")).to_pylist())
    cards, examples = [], []
    for name in stages:
        counts = summary["stages"].get(name, {})
        quota = {("dropped", r): per_reason for r in counts.get("dropped", {})}
        quota |= {("error", r): per_reason for r in counts.get("errors", {})}
        if card_stages and name == card_stages[-1]:
            quota[("ok", "")] = kept
        rows = sample_rows(store, name, quota, kept_ids=kept_ids) if quota else []
        if name in clip_stages:
            stage = stages[name]
            scores = [*stage.thresholds(), *stage.score_columns()] if stage else []
            for card in pick_cards(name, rows, list(dict.fromkeys(scores)), per_reason, kept):
                card.media = resolve_media(store, card.media)
                cards.append(card)
        else:
            examples += [{"stage": name, "status": r["status"], **{c: r.get(c) for c in EXAMPLE_COLUMNS}}
                         for r in rows]
    return cards, examples


def write_report(run_dir: str, thumbnails: bool = True) -> str:
    """Writes RUN/report.html (atomically); returns its path."""
    store = RunStore(run_dir)
    page = build_report(store, thumbnails)
    path = store.path("report.html")
    store.write_bytes(path, page.encode())
    return path


def build_report(store: RunStore, thumbnails: bool = True) -> str:
    summary = summarize(store)
    stages = run_stages(store)
    funnel = [{"name": name, "rows_in": s["rows_in"], "kept": s["kept"], "dropped": sum(s["dropped"].values()),
               "errors": sum(s["errors"].values()), "seconds": s["seconds"], "by_reason": s}
              for name, s in summary["stages"].items()]
    cards, examples = gallery(store, stages, summary)
    if thumbnails:
        add_thumbnails(cards)
    hists = histograms(store, stages)
    return render(summary, funnel, hists, cards, examples)


def _reasons(counts: dict[str, int]) -> str:
    return "<br>".join(f'<span data-reason="{html.escape(r)}">{html.escape(r)}: {n}</span>' for r, n in counts.items())


def render(summary: dict, funnel: list[dict], hists: list[dict], cards: list[Card], examples: list[dict]) -> str:
    esc = html.escape
    rows = []
    for s in funnel:
        rate = f"{s['rows_in'] / s['seconds']:.3g}" if s["seconds"] > 0 else "-"
        by = s["by_reason"]
        rows.append(f'<tr data-stage="{esc(s["name"])}"><td>{esc(s["name"])}</td><td>{by["parts_done"]}/{by["parts"]}</td>'
                    f'<td class="in">{s["rows_in"]}</td><td class="kept">{s["kept"]}</td>'
                    f'<td class="dropped">{s["dropped"]}</td><td class="errors">{s["errors"]}</td>'
                    f'<td class="why">{_reasons(by["dropped"])}</td><td class="why">{_reasons(by["errors"])}</td>'
                    f'<td class="seconds">{s["seconds"]:.1f}</td><td class="rate">{rate}</td></tr>')
    figures = [f'<figure class="histogram" data-stage="{esc(h["stage"])}" data-column="{esc(h["column"])}">'
               + charts.histogram(h["values"], h["thresholds"], f'{h["stage"]}: {h["column"]} ({len(h["values"])} rows)',
                                  f'h{i}') + "</figure>" for i, h in enumerate(hists)]
    sections: dict[tuple[str, str, str], list[str]] = {}
    for card in cards:
        label = "kept" if card.status == "ok" else f"{card.status}: {card.code}"
        sections.setdefault((card.status != "ok", card.stage, label), []).append(card_html(card))
    gallery_html = "".join(f'<h3>{esc(stage)} - {esc(label)}</h3><div class="cards">{"".join(items)}</div>'
                           for (_, stage, label), items in sections.items())
    example_rows = "".join(
        f'<tr data-stage="{esc(e["stage"])}"><td>{esc(e["stage"])}</td><td>{esc(e["status"])}</td>'
        f'<td>{esc(str(e.get("id")))}</td><td>{esc(str(e.get("title") or ""))}</td><td>{esc(str(e.get("reason") or ""))}</td></tr>'
        for e in examples)
    title = f'run {esc(str(summary.get("run_id")))} ({esc(str(summary.get("profile")))})'
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{STYLE}</style></head><body>
<h1>{title}</h1>
<p>{summary["parts"]} parts. Rows into each stage, and what it kept, dropped and failed, by reason.</p>
<h2 id="funnel-title">Funnel</h2>
<div class="chart" id="funnel-chart">{charts.funnel_chart(funnel)}</div>
<table id="funnel"><thead><tr><th>stage</th><th>parts</th><th>in</th><th>kept</th><th>dropped</th><th>errors</th>
<th>dropped by reason</th><th>errors by reason</th><th>worker-s</th><th>rows/s</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<h2>Time per stage</h2>
<div class="chart" id="seconds-chart">{charts.seconds_chart(funnel)}</div>
<h2>Scores and thresholds</h2>
<div class="histograms">{"".join(figures)}</div>
<h2>Rows the video stages dropped or failed (examples)</h2>
<table id="examples"><thead><tr><th>stage</th><th>status</th><th>id</th><th>title</th><th>reason</th></tr></thead>
<tbody>{example_rows}</tbody></table>
<h2>Clips</h2>
<section id="gallery">{gallery_html}</section>
</body></html>
"""


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:20px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}h3{font-size:14px;margin:16px 0 6px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 6px;vertical-align:top;text-align:left}
td.in,td.kept,td.dropped,td.errors,td.seconds,td.rate{text-align:right}td.why{font-size:12px;color:#555}
.histograms{display:flex;flex-wrap:wrap;gap:8px}figure{margin:0}svg{max-width:100%;height:auto}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:10px}
.clip{border:1px solid #ccc;border-radius:6px;padding:8px;background:#fafafa}
.clip.ok{border-left:4px solid #4c956c}.clip.dropped{border-left:4px solid #f4a259}.clip.error{border-left:4px solid #bc4b51}
.thumbs{display:flex;gap:3px;margin:6px 0}.thumbs img{width:120px;height:auto;border-radius:2px}
.timeline{font-size:12px;max-height:150px;overflow:auto;border-top:1px dashed #ccc;padding-top:4px}
.trow .t{display:inline-block;width:48px;color:#888}.w{cursor:default}.w:hover{background:#ffe8a3}
.scores code{font-size:12px;background:#eef;padding:0 3px;margin-right:4px}.reason{color:#bc4b51;font-size:12px}
.time{color:#777;font-size:12px}.nomedia{color:#999;font-size:12px}
"""
