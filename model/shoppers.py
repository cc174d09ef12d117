"""What a new item's first shoppers say about its row: a map from their ranker states to the item table.

A new item's shoppers are users in the state that picked it: their ranker states (each user's state just before
the interaction) are what a softmax step adds into the item's row. But a row is not their mean: users' states share
a large common part (about half of a state's length on the simulated shop) while trained rows are nearly orthogonal
to it, and the scale of a row is set by the softmax's balance with every other item. So the step from shoppers to
row is learned where both are known, on the trained items: for each one, the mean state of a random handful of its
shoppers (1, 2, 4, ... 32 of them, the counts a new item has while it is learned live) minus the mean state over
every training position, and a ridge regression from that difference to the item's learned row. The regression
learns direction, scale and how far to trust a mean of few shoppers at once; its held-out quality (cosine, hit
rate of the true row among the trained rows, and the cosine by count of shoppers, which sets how long a row is
served: :func:`held_out_confidence`) is written into the manifest (``shoppers.quality``).

A worker moves a live item's row with it (``stream/new_items.py``) and ``streamrec eval --catalog`` measures it
offline (``model/cold_items.py``), both through :func:`learned_rows`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from streamrec.model.content import (
    holdout_predictions,
    prediction_quality,
    read_tensors,
    ridge_regression,
    row_cosines,
)

SHOPPERS_FORMAT = "streamrec.shopper_projection"
SHOPPERS_FORMAT_VERSION = "2"
#: Versions still read: version 1 has no confidence per shopper count and is served at full length, as it was.
READABLE_VERSIONS = ("1", SHOPPERS_FORMAT_VERSION)
#: The shopper counts the map is fitted on, one drawn per trained item: those a live item is learned at.
SHOPPER_COUNTS = (1, 2, 4, 8, 16, 32)
#: Held-out items a shopper count needs for a confidence of its own; fewer take the overall held-out cosine.
MIN_ITEMS_PER_COUNT = 5
#: The shortest a row is served at, as a share of a trained row's length.
MIN_CONFIDENCE = 0.05


@dataclass(frozen=True, eq=False)
class ShopperProjection:
    """A new item's row from its shoppers: ``(mean shopper state − population_mean) @ weights + bias``, served at
    a trained row's length times the held-out cosine of its count of shoppers (:meth:`with_optimism` lengthens it)
    and with a typical trained row's component along the population's mean state (:meth:`project`)."""

    weights: np.ndarray  # float32 [d, d]
    bias: np.ndarray  # float32 [d]
    population_mean: np.ndarray  # float32 [d]: mean ranker state over every training position
    target_norm: float  # median length of the trained rows: every projected row is served at it
    typical_reach: float = 0.0  # median of the trained rows' components along the population's mean state
    quality: dict[str, float] = field(default_factory=dict)
    # float32 [len(SHOPPER_COUNTS)]: share of the length a row is served at, by shopper count (held-out cosine)
    confidence: np.ndarray = field(default_factory=lambda: np.ones(len(SHOPPER_COUNTS), dtype=np.float32))

    def __post_init__(self) -> None:
        weights = np.ascontiguousarray(self.weights, dtype=np.float32)
        bias = np.ascontiguousarray(self.bias, dtype=np.float32)
        population = np.ascontiguousarray(self.population_mean, dtype=np.float32)
        if weights.ndim != 2 or bias.shape != (weights.shape[1],) or population.shape != (weights.shape[0],):
            raise ValueError(
                f"weights {weights.shape}, bias {bias.shape} and population mean {population.shape} do not fit"
            )
        if not all(np.all(np.isfinite(t)) for t in (weights, bias, population)):
            raise ValueError("the shopper projection holds NaN or infinite values")
        if not (math.isfinite(self.target_norm) and self.target_norm > 0):
            raise ValueError(f"target_norm must be a positive finite number, got {self.target_norm!r}")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "population_mean", population)
        confidence = np.ascontiguousarray(self.confidence, dtype=np.float32)
        if confidence.shape != (len(SHOPPER_COUNTS),) or not np.all((confidence > 0) & (confidence <= 1)):
            raise ValueError(f"confidence must be {len(SHOPPER_COUNTS)} shares in (0, 1], got {confidence!r}")
        object.__setattr__(self, "confidence", confidence)

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    def with_optimism(self, optimism: float) -> ShopperProjection:
        """This map serving rows ``optimism`` of the way from their expected length (:attr:`confidence`, 0) to a
        trained row's full length (1)."""
        return replace(self, confidence=self.confidence + optimism * (1.0 - self.confidence))

    @classmethod
    def fit(
        cls,
        state_sums: np.ndarray,
        counts: np.ndarray,
        population_mean: np.ndarray,
        item_embeddings: np.ndarray,
        ridge: float = 1.0,
        seed: int = 0,
    ) -> ShopperProjection:
        """Fit on the trained items with at least one shopper: ``state_sums`` ``[n, d]`` over ``counts`` of their
        shoppers, against their rows ``item_embeddings`` ``[n, d]``; a tenth is held out first for ``quality``."""
        seen = counts > 0
        if np.count_nonzero(seen) < 3:
            raise ValueError("fewer than 3 trained items have a shopper: no map to fit")
        x = state_sums[seen] / counts[seen, None] - population_mean[None, :]
        y = np.asarray(item_embeddings, dtype=np.float64)[seen]
        held, kept, predictions = holdout_predictions(x, y, ridge, 0.1, seed)
        quality = prediction_quality(y, held, kept, predictions)
        confidence = held_out_confidence(row_cosines(predictions, y[held]), counts[seen][held])
        quality |= {f"holdout_cosine_{n}_shoppers": float(c) for n, c in zip(SHOPPER_COUNTS, confidence, strict=True)}
        weights, bias = ridge_regression(x, y, ridge)
        target_norm = float(np.median(np.linalg.norm(y, axis=1)))
        everyone = population_mean / max(float(np.linalg.norm(population_mean)), 1e-12)
        reach = float(np.median(np.asarray(item_embeddings, dtype=np.float64) @ everyone))
        quality |= {"items": int(np.count_nonzero(seen))}
        return cls(weights, bias, population_mean, target_norm, reach, quality, confidence)

    def project(self, state_sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """float32 ``[n, d]``: the rows ``counts`` shoppers with states summing to ``state_sums`` say, at
        :attr:`target_norm` times the :attr:`confidence` of their count (a ridge prediction is shorter than the
        rows it was fitted on, a row's length is what lets it compete with trained items, and a row read from one
        shopper is a guess that should compete as one); all-zero where the count is 0."""
        counts = np.asarray(counts, dtype=np.float64)
        means = np.asarray(state_sums, dtype=np.float64) / np.maximum(counts, 1)[:, None]
        rows = (means - self.population_mean) @ self.weights + self.bias
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        rows = np.divide(rows * self.target_norm, norms, out=np.zeros_like(rows), where=norms > 0)
        # What every user shares scores an item for everyone: a typical trained row's share of it, not more, or
        # a handful of shoppers would put the item in every list.
        everyone = self.population_mean / max(float(np.linalg.norm(self.population_mean)), 1e-12)
        rows += np.outer(self.typical_reach - rows @ everyone, everyone)
        rows *= self.confidence[count_slots(counts)][:, None]
        rows[counts <= 0] = 0.0
        return rows.astype(np.float32)

    def save(self, path: Path) -> None:
        metadata = {
            "format": SHOPPERS_FORMAT,
            "format_version": SHOPPERS_FORMAT_VERSION,
            "target_norm": repr(self.target_norm),
            "typical_reach": repr(self.typical_reach),
            "quality": json.dumps(self.quality, sort_keys=True),
        }
        tensors = {
            "weights": self.weights,
            "bias": self.bias,
            "population_mean": self.population_mean,
            "confidence": self.confidence,
        }
        save_file(tensors, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: Path) -> ShopperProjection:
        """Read a map written by :meth:`save`; ValueError if the file is corrupt or inconsistent."""
        tensors, metadata = read_tensors(path, "shopper projection")
        if metadata.get("format") != SHOPPERS_FORMAT or metadata.get("format_version") not in READABLE_VERSIONS:
            raise ValueError(f"{path} is not a shopper projection of format version {', '.join(READABLE_VERSIONS)}")
        full_length = np.ones(len(SHOPPER_COUNTS), dtype=np.float32)
        try:
            return cls(
                tensors["weights"],
                tensors["bias"],
                tensors["population_mean"],
                float(metadata["target_norm"]),
                float(metadata["typical_reach"]),
                json.loads(metadata["quality"]),
                full_length if metadata["format_version"] == "1" else tensors["confidence"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid shopper projection {path}: {exc}") from exc


def count_slots(counts: np.ndarray) -> np.ndarray:
    """Each shopper count's slot in :data:`SHOPPER_COUNTS`: the largest listed count not above it (1 below 1)."""
    slots = np.floor(np.log2(np.maximum(np.asarray(counts, dtype=np.float64), 1.0))).astype(np.int64)
    return np.minimum(slots, len(SHOPPER_COUNTS) - 1)


def held_out_confidence(cosines: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """float32 ``[len(SHOPPER_COUNTS)]``: the mean cosine of held-out rows to their shoppers' ridge prediction
    (``cosines``, one per held-out item with ``counts`` shoppers), by shopper count. A count with fewer than
    :data:`MIN_ITEMS_PER_COUNT` held-out items takes the overall mean; more shoppers never mean less confidence.

    Serving a row at its prediction's expected cosine makes its scores what they are expected to be: ``v · r`` of the
    true row ``r`` is ``cos · |r| · (v · r̂)`` on average when its error is orthogonal to the prediction ``r̂``."""
    slots = count_slots(counts)
    overall = float(cosines.mean())
    by_count = np.array(
        [
            float(cosines[slots == slot].mean()) if np.count_nonzero(slots == slot) >= MIN_ITEMS_PER_COUNT else overall
            for slot in range(len(SHOPPER_COUNTS))
        ]
    )
    return np.clip(np.maximum.accumulate(by_count), MIN_CONFIDENCE, 1.0).astype(np.float32)


def learned_rows(content: np.ndarray, shopper_rows: np.ndarray, counts: np.ndarray, prior: float) -> np.ndarray:
    """float32 ``[items, d]``: new items' rows once ``counts`` of their interactions are seen, their served
    ``content`` rows and the rows their shoppers say (:meth:`ShopperProjection.project`) weighted ``prior : count``.
    An item without content (an all-zero row) takes its shoppers' row alone; one with neither keeps no row."""
    counts = np.asarray(counts, dtype=np.float64)[:, None]
    has_content = np.any(np.asarray(content) != 0, axis=1, keepdims=True)
    weight = np.where(has_content, counts / (counts + prior), (counts > 0).astype(np.float64))
    return ((1.0 - weight) * content + weight * shopper_rows).astype(np.float32)


def shopper_states(
    hidden: torch.Tensor, targets: torch.Tensor, caps: np.ndarray, sums: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, int]:
    """Add a batch's states ``hidden`` ``[positions, d]`` into the sums of their ``targets`` (item rows) while an
    item holds fewer than its ``caps`` shoppers; returns every position's state sum and count (the population)."""
    states = hidden.detach().double().numpy()
    rows = targets.numpy()
    for position in np.flatnonzero(counts[rows] < caps[rows]):
        row = rows[position]
        if counts[row] < caps[row]:  # the same item may come twice in one batch
            sums[row] += states[position]
            counts[row] += 1
    return states.sum(axis=0), len(states)


def draw_caps(n_items: int, seed: int) -> np.ndarray:
    """Each trained item's number of shoppers to average, drawn from :data:`SHOPPER_COUNTS`."""
    return np.random.default_rng([seed, 31]).choice(np.array(SHOPPER_COUNTS), n_items)
