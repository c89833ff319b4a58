"""The run report's charts: matplotlib figures rendered to inline SVG (no JavaScript, no CDN: the report
opens offline in any browser, and the charts are plain DOM a test can read). Text stays text in the SVG
(`svg.fonttype: none`), so the files stay small and searchable.
"""
from __future__ import annotations

import io
import math

KEPT, DROPPED, ERROR = "#4c956c", "#f4a259", "#bc4b51"
THRESHOLD = "#3d5a80"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _svg(fig, name: str) -> str:
    """The figure as an <svg> element; `name` salts matplotlib's element ids so that several inline
    figures never share one."""
    plt = _pyplot()
    with plt.rc_context({"svg.fonttype": "none", "svg.hashsalt": name}):
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def funnel_chart(stages: list[dict]) -> str:
    """Horizontal stacked bars, one per stage: rows kept, dropped and failed."""
    plt = _pyplot()
    names = [s["name"] for s in stages][::-1]
    kept = [s["kept"] for s in stages][::-1]
    dropped = [s["dropped"] for s in stages][::-1]
    errors = [s["errors"] for s in stages][::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(names) + 0.9))
    ax.barh(names, kept, color=KEPT, label="kept")
    ax.barh(names, dropped, left=kept, color=DROPPED, label="dropped")
    ax.barh(names, errors, left=[k + d for k, d in zip(kept, dropped)], color=ERROR, label="errors")
    for y, (k, d, e) in enumerate(zip(kept, dropped, errors)):
        ax.text(k + d + e, y, f" {k + d + e}", va="center", fontsize=8)
    ax.set_xlabel("rows into the stage")
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig, "funnel")


def seconds_chart(stages: list[dict]) -> str:
    """Worker-seconds per stage."""
    plt = _pyplot()
    names = [s["name"] for s in stages][::-1]
    seconds = [s["seconds"] for s in stages][::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.4 * len(names) + 0.8))
    ax.barh(names, seconds, color=THRESHOLD)
    ax.set_xlabel("worker-seconds (all parts)")
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig, "seconds")


def histogram(values: list[float], thresholds: tuple[float, ...], title: str, name: str) -> str:
    """A histogram of one column's values with the configured thresholds as vertical lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    finite = [v for v in values if math.isfinite(v)]
    low = min(finite + list(thresholds)) if finite or thresholds else 0.0
    high = max(finite + list(thresholds)) if finite or thresholds else 1.0
    if high <= low:
        low, high = low - 0.5, high + 0.5
    ax.hist(finite, bins=min(40, max(5, len(finite) // 2)), range=(low, high), color="#98c1d9",
            edgecolor="#3d5a80", linewidth=0.4)
    for i, limit in enumerate(thresholds):
        ax.axvline(limit, color=ERROR, linestyle="--", linewidth=1.2, label="threshold" if i == 0 else None)
    if thresholds:
        ax.legend(fontsize=7, frameon=False)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("rows", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    return _svg(fig, name)
