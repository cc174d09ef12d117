"""``streamrec report``: how each A/B variant does online, with 95 % confidence intervals.

Two sources of the same hit rates:

* **A worker's metrics** (``--metrics URL``, repeatable: one per worker, summed): the online evaluation's counters
  (``streamrec_online_*``, see ``stream/online_eval.py``), the lists' diversity histogram and each worker's
  catalogue coverage (the largest; coverage cannot be summed across workers).
* **The topics** (``--from-topics``): the recommendations and events of a time range, joined as the worker
  joins them: each list against its user's next event within the window. Coverage counts distinct items over
  the items the range's events touched; diversity is the share of distinct categories in a list (the catalog
  topic gives the categories).

Hit rates get Wilson score intervals; the difference between each variant and the first, a normal interval on the
difference of two proportions; a mean diversity, a normal interval (from the histogram's buckets for metrics).
"""

from __future__ import annotations

import math
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from streamrec.stream.errors import StreamrecError
from streamrec.stream.metrics import ONLINE_HIT_DEPTHS

Z_95 = 1.959964


def wilson_interval(hits: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion; (0, 1) without observations."""
    if n <= 0:
        return 0.0, 1.0
    p = hits / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def difference_interval(hits_a: int, n_a: int, hits_b: int, n_b: int, z: float = Z_95) -> tuple[float, float, float]:
    """(p_b − p_a, low, high): the difference of two proportions with a normal (Wald) interval."""
    if n_a <= 0 or n_b <= 0:
        return 0.0, -1.0, 1.0
    p_a, p_b = hits_a / n_a, hits_b / n_b
    half = z * math.sqrt(p_a * (1 - p_a) / n_a + p_b * (1 - p_b) / n_b)
    return p_b - p_a, p_b - p_a - half, p_b - p_a + half


@dataclass
class Mean:
    """A mean with its normal 95 % interval."""

    value: float
    n: int
    half_width: float

    @classmethod
    def of(cls, total: float, squares: float, n: int) -> Mean | None:
        if n <= 0:
            return None
        mean = total / n
        variance = max(0.0, squares / n - mean * mean) * (n / (n - 1) if n > 1 else 0.0)
        return cls(mean, n, Z_95 * math.sqrt(variance / n))


@dataclass
class VariantReport:
    variant: str
    lists: int = 0
    evaluated: int = 0
    hits: dict[int, int] = field(default_factory=dict)
    covered_items: int | None = None
    coverage: float | None = None
    diversity: Mean | None = None

    def hit_rate(self, k: int) -> tuple[float, float, float]:
        hits = self.hits.get(k, 0)
        low, high = wilson_interval(hits, self.evaluated)
        return (hits / self.evaluated if self.evaluated else 0.0), low, high

    def as_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "lists": self.lists,
            "evaluated": self.evaluated,
            "hit_rate": {
                f"@{k}": dict(zip(("rate", "low", "high"), map(_rounded, self.hit_rate(k)), strict=True))
                for k in ONLINE_HIT_DEPTHS
            },
            "covered_items": self.covered_items,
            "coverage": None if self.coverage is None else _rounded(self.coverage),
            "diversity": None
            if self.diversity is None
            else {"mean": _rounded(self.diversity.value), "half_width": _rounded(self.diversity.half_width)},
        }


def _rounded(value: float) -> float:
    return round(value, 5)


# --- from metrics ------------------------------------------------------------------------------------------------
def scrape(url: str, timeout_s: float = 10.0) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.read().decode()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StreamrecError(f"cannot read metrics from {url}: {reason}") from None


def report_from_metrics(texts: Iterable[str]) -> list[VariantReport]:
    """Per-variant figures from the Prometheus text of one or more workers."""
    from prometheus_client.parser import text_string_to_metric_families

    reports: dict[str, VariantReport] = {}
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    sums: dict[str, float] = defaultdict(float)

    def of(variant: str) -> VariantReport:
        return reports.setdefault(variant, VariantReport(variant))

    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                variant = sample.labels.get("variant")
                if variant is None:
                    continue
                name, value = sample.name, sample.value
                if name == "streamrec_recommendations_published_total":
                    of(variant).lists += int(value)
                elif name == "streamrec_online_evaluated_total":
                    of(variant).evaluated += int(value)
                elif name == "streamrec_online_hits_total":
                    k = int(sample.labels["k"])
                    report = of(variant)
                    report.hits[k] = report.hits.get(k, 0) + int(value)
                elif name == "streamrec_recommended_items":
                    report = of(variant)
                    report.covered_items = max(report.covered_items or 0, int(value))
                elif name == "streamrec_catalog_coverage_ratio":
                    report = of(variant)
                    report.coverage = max(report.coverage or 0.0, value)
                elif name == "streamrec_list_diversity_bucket":
                    buckets[variant][float(sample.labels["le"])] += value
                elif name == "streamrec_list_diversity_sum":
                    sums[variant] += value
    for variant, cumulative in buckets.items():
        of(variant).diversity = _histogram_mean(cumulative, sums[variant])
    return [reports[name] for name in sorted(reports, key=lambda name: (name != "default", name))]


def _histogram_mean(cumulative: Mapping[float, float], total: float) -> Mean | None:
    """The mean from the histogram's sum and count; its spread from the buckets' midpoints."""
    bounds = sorted(cumulative)
    n = int(cumulative[bounds[-1]]) if bounds else 0
    if n <= 0:
        return None
    squares, below, lower = 0.0, 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound] - below
        upper = bound if math.isfinite(bound) else lower
        squares += count * ((lower + upper) / 2) ** 2
        below, lower = cumulative[bound], upper
    estimate = Mean.of(total, squares, n)
    return None if estimate is None else Mean(total / n, n, estimate.half_width)


# --- from topics -------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ShownRecord:
    user_id: str
    variant: str
    trigger_event_id: str | None
    trigger_ts: float
    item_ids: tuple[str, ...]
    trigger_item: str | None = None


@dataclass(frozen=True, slots=True)
class EventRecord:
    user_id: str
    event_id: str | None
    item_id: str
    ts: float
    event_type: str = "view"


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError("expected a finite number")
    return float(value)


def parse_recommendation(value: bytes) -> ShownRecord | None:
    """A recommendation message, or None for a tombstone or a message this version cannot read."""
    try:
        data = orjson.loads(value)
        trigger = data["trigger"]
        return ShownRecord(
            _text(data["user_id"]),
            _text(data.get("variant", "default")),
            _optional_text(trigger.get("event_id")),
            _number(trigger["ts"]),
            tuple(_text(item["item_id"]) for item in data["items"]),
            _optional_text(trigger.get("item_id")),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def parse_event(value: bytes) -> EventRecord | None:
    """An event message, or None for a command or a malformed message (which the worker dead-letters). Events are
    joined to lists by ``event_id``: events without one cannot be matched to the list that answered them."""
    try:
        data = orjson.loads(value)
        return EventRecord(
            _text(data["user_id"]),
            _optional_text(data.get("event_id")),
            _text(data["item_id"]),
            _number(data["ts"]),
            _text(data.get("event_type", "view")),
        )
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def report_from_records(
    shown: Sequence[ShownRecord],
    events: Sequence[EventRecord],
    window_s: float,
    catalog: Mapping[str, str | None] | None = None,
) -> list[VariantReport]:
    """Join each list with its user's next event within ``window_s`` after the event it answered.

    ``catalog`` (item → category, from the catalog topic) gives the diversity and the coverage's denominator;
    without it, coverage is over every item the range's events and lists name."""
    by_user: dict[str, list[EventRecord]] = defaultdict(list)
    for event in events:
        by_user[event.user_id].append(event)
    position: dict[tuple[str, str], int] = {}
    for user_id, user_events in by_user.items():
        user_events.sort(key=lambda event: event.ts)
        for index, event in enumerate(user_events):
            if event.event_id is not None:
                position[user_id, event.event_id] = index
    latest: dict[tuple[str, str | None, float], ShownRecord] = {}
    for record in shown:  # a redelivered batch publishes a list twice: count it once
        latest[record.user_id, record.trigger_event_id, record.trigger_ts] = record
    reports: dict[str, VariantReport] = {}
    recommended: dict[str, set[str]] = defaultdict(set)
    diversity: dict[str, list[float]] = defaultdict(list)
    for record in latest.values():
        report = reports.setdefault(record.variant, VariantReport(record.variant))
        report.lists += 1
        recommended[record.variant].update(record.item_ids)
        if catalog and record.item_ids:
            categories = [catalog.get(item) for item in record.item_ids]
            diversity[record.variant].append(len(set(categories)) / len(categories))
        index = position.get((record.user_id, record.trigger_event_id)) if record.trigger_event_id else None
        if index is None or index + 1 >= len(by_user[record.user_id]):
            continue
        history = by_user[record.user_id]
        following = history[index + 1]
        bought = {event.item_id for event in history[: index + 1] if event.event_type == "buy"}
        if following.item_id == record.trigger_item or following.item_id in bought:
            continue  # the list could not hold it, as the worker's online evaluation skips it
        if not 0.0 <= following.ts - record.trigger_ts <= window_s:
            continue
        report.evaluated += 1
        if following.item_id in record.item_ids:
            rank = record.item_ids.index(following.item_id) + 1
            for k in ONLINE_HIT_DEPTHS:
                if rank <= k:
                    report.hits[k] = report.hits.get(k, 0) + 1
    named = {event.item_id for event in events}.union(*recommended.values())
    n_items = len(catalog) if catalog else len(named)
    for variant, report in reports.items():
        report.covered_items = len(recommended[variant])
        report.coverage = len(recommended[variant]) / n_items if n_items else None
        values = diversity.get(variant)
        if values:
            report.diversity = Mean.of(sum(values), sum(v * v for v in values), len(values))
    return [reports[name] for name in sorted(reports, key=lambda name: (name != "default", name))]


# --- printing ------------------------------------------------------------------------------------------------------
def format_report(reports: Sequence[VariantReport], coverage_basis: str) -> str:
    if not reports:
        return "no variant has published a list yet"
    lines = [
        f"{'variant':<14} {'lists':>9} {'evaluated':>9}  "
        + "  ".join(f"{'HR@' + str(k) + ' (95% CI)':<24}" for k in ONLINE_HIT_DEPTHS)
        + f"  {'coverage':>9}  diversity (95% CI)"
    ]
    for report in reports:
        cells = []
        for k in ONLINE_HIT_DEPTHS:
            rate, low, high = report.hit_rate(k)
            cells.append(f"{rate:.4f} ({low:.4f}–{high:.4f})" if report.evaluated else "n/a")
        coverage = "n/a" if report.coverage is None else f"{report.coverage:.2%}"
        diversity = (
            "n/a" if report.diversity is None else f"{report.diversity.value:.3f} ± {report.diversity.half_width:.3f}"
        )
        lines.append(
            f"{report.variant:<14} {report.lists:>9} {report.evaluated:>9}  "
            + "  ".join(f"{cell:<24}" for cell in cells)
            + f"  {coverage:>9}  {diversity}"
        )
    base = reports[0]
    for report in reports[1:]:
        for k in ONLINE_HIT_DEPTHS:
            delta, low, high = difference_interval(
                base.hits.get(k, 0), base.evaluated, report.hits.get(k, 0), report.evaluated
            )
            lines.append(
                f"{report.variant} vs {base.variant}: HR@{k} {delta:+.4f} (95% CI {low:+.4f} to {high:+.4f})"
                + ("  significant" if low > 0 or high < 0 else "")
            )
    lines.append(f"coverage: {coverage_basis}")
    return "\n".join(lines)
