"""The chart ``streamrec eval`` writes beside its JSON report: each model's full-ranking HR and NDCG at 5, 10 and
20, the served pipeline's lists beside them, and the beyond-accuracy measures (coverage, diversity, novelty)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

ACCURACY = ("HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20")
SHARES = (("coverage", "catalogue coverage"), ("intra_list_diversity@10", "diversity@10"))
NOVELTY = "novelty@10"


def _bars(axes: Any, groups: list[str], series: list[tuple[str, list[float]]], colors: dict[str, str]) -> None:
    """Grouped bars: one group per x label, one bar per series, each model in its colour on every panel."""
    width = 0.8 / max(1, len(series))
    positions = np.arange(len(groups))
    for n, (name, values) in enumerate(series):
        axes.bar(positions + n * width, values, width, label=name, color=colors[name])
    axes.set_xticks(positions + width * (len(series) - 1) / 2, groups)


def plot_report(report: Mapping[str, Any], path: Path) -> None:
    """Draw the report's accuracy, coverage and diversity, and novelty measures to ``path`` (PNG)."""
    results: Mapping[str, Mapping[str, Any]] = report["results"]
    accuracy_rows = [(name, result["full"]) for name, result in results.items() if "full" in result]
    served = report.get("served")
    if served:
        accuracy_rows.append((f"served (top-{served['top_k']})", served))
    beyond = [name for name, result in results.items() if NOVELTY in result]
    figure = Figure(figsize=(13, 4.2), tight_layout=True)
    FigureCanvasAgg(figure)
    accuracy, shares, novelty = figure.subplots(1, 3, gridspec_kw={"width_ratios": [3, 1.4, 1]})
    palette = [f"C{n}" for n in range(10)]  # matplotlib's default cycle
    colors = {name: palette[n % len(palette)] for n, (name, _) in enumerate(accuracy_rows)}
    accuracy_series = [(name, [float(m.get(k, np.nan)) for k in ACCURACY]) for name, m in accuracy_rows]
    _bars(accuracy, list(ACCURACY), accuracy_series, colors)
    accuracy.set(title=f"{report['dataset']}: full ranking, leave-one-out ({report['n_users']} users)")
    accuracy.legend(fontsize="small")
    share_series = [(name, [float(results[name][key]) for key, _ in SHARES]) for name in beyond]
    _bars(shares, [label for _, label in SHARES], share_series, colors)
    shares.set(title="top-10 lists", ylim=(0, 1))
    _bars(novelty, ["novelty@10 (bits)"], [(name, [float(results[name][NOVELTY])]) for name in beyond], colors)
    novelty.set(title="novelty")
    figure.savefig(path, dpi=100)
