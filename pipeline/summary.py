"""Per-stage counts from the done-markers: parts done, rows in, kept, dropped by reason, errors."""
from __future__ import annotations

from collections import Counter

from pipeline.store import RunStore


def summarize(store: RunStore) -> dict:
    info = store.read_json("run.json")
    parts = info["parts"]
    stages = {}
    for name in info["stages"]:
        done, rows_in, seconds = 0, 0, 0.0
        counts = {"ok": Counter(), "dropped": Counter(), "error": Counter()}
        scores: dict[str, list[float]] = {}
        totals: Counter = Counter()
        for part in range(parts):
            marker = store.marker(name, part)
            if not marker:
                continue
            done += 1
            rows_in += marker["rows_in"]
            seconds += marker["seconds"]
            for status, by_reason in marker["counts"].items():
                counts[status].update(by_reason)
            for column, values in marker.get("scores", {}).items():
                scores.setdefault(column, []).extend(values)
            totals.update(marker.get("totals", {}))
        stages[name] = {
            "parts_done": done, "parts": parts, "rows_in": rows_in,
            "kept": sum(counts["ok"].values()),
            "dropped": dict(counts["dropped"].most_common()),
            "errors": dict(counts["error"].most_common()),
            "seconds": round(seconds, 2),
            "score_quantiles": {c: quantiles(v) for c, v in scores.items()},
            "totals": dict(totals),
        }
    return {"run_id": info.get("run_id"), "profile": info.get("profile"), "parts": parts, "stages": stages}


def quantiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]  # noqa: E731
    return {"min": ordered[0], "p10": pick(0.1), "p50": pick(0.5), "p90": pick(0.9), "max": ordered[-1]}


def write_summary(store: RunStore, summary: dict) -> None:
    store.write_json("stats/summary.json", summary)


def _reasons(counts: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in counts.items())


def format_summary(summary: dict) -> str:
    lines = [f"{'stage':<19} {'parts':>9} {'in':>7} {'kept':>7} {'dropped':>8} {'errors':>7} {'seconds':>8}"]
    for name, s in summary["stages"].items():
        parts = f"{s['parts_done']}/{s['parts']}"
        lines.append(f"{name:<19} {parts:>9} {s['rows_in']:>7} {s['kept']:>7} "
                     f"{sum(s['dropped'].values()):>8} {sum(s['errors'].values()):>7} {s['seconds']:>8.1f}")
        if s["dropped"]:
            lines.append(f"{'':<4}dropped: {_reasons(s['dropped'])}")
        if s["errors"]:
            lines.append(f"{'':<4}errors:  {_reasons(s['errors'])}")
        for column, q in s.get("score_quantiles", {}).items():
            lines.append(f"{'':<4}{column}: " + " ".join(f"{k} {v:.3g}" for k, v in q.items()))
        if s.get("totals"):
            lines.append(f"{'':<4}totals:  " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                                        for k, v in s["totals"].items()))
    return "\n".join(lines)
