"""The training configuration: every hyper-parameter of a run, recorded in full in the artifact manifest.

It is also the ``train`` section of :class:`streamrec.stream.settings.Settings` (environment variables
``STREAMREC_TRAIN__<FIELD>``, e.g. ``STREAMREC_TRAIN__DIM=128``), so the settings reference documents it; a
few serving settings (event weights, half-life, history length, index search breadth) take precedence over their
training twins when ``streamrec train`` runs, so that training and serving agree.

This module imports neither torch nor FAISS: the command line reads it before deciding to load them.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from streamrec.index.params import (
    DEFAULT_EF_SEARCH,
    DEFAULT_N_CANDIDATES,
    DEFAULT_RERANK_FACTOR,
    IndexKindOrAuto,
)
from streamrec.model.events import DEFAULT_EVENT_WEIGHTS, DEFAULT_HALF_LIFE_S, checked_event_weights

RankerCompression = Literal["none", "int8", "distilled", "distilled_int8"]
"""The forms a worker can serve its ranker in (``model/compress.py``); here, so settings need not import torch."""

FULL_SOFTMAX_MAX_ITEMS = 25_000
SAMPLED_NEGATIVES = 1_024
SPARSE_TABLE_MIN_ITEMS = 250_000
EVAL_MAX_SCORES = 2_000_000_000

# Weight of a new item's content row against its shoppers' mean state, in interactions (content.learned_rows): not
# tuned, one interaction's worth, so the first shopper already counts as much as the text.
DEFAULT_SHOPPER_PRIOR = 1.0
# How far beyond their expected length new items' learned rows are served (ShopperProjection.with_optimism): a
# trained row's full length, the behaviour measured first, until a length is chosen on a validation simulation.
DEFAULT_OPTIMISM = 1.0


class TrainConfig(BaseModel):
    """Hyper-parameters of one training run.

    The full softmax scores every item for every target position, a chunk of positions at a time (its memory is
    bounded, its time grows with targets × items); the sampled softmax holds ``batch_size · max_len ·
    (1 + sampled_negatives) · 16`` bytes, whatever the catalogue's size (``model/softmax.py``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- the sequence ranker ---------------------------------------------------------------------------------
    dim: int = Field(64, ge=2, description="Item embedding and model width.")
    max_len: int = Field(50, ge=1, description="Longest history (recent items) the ranker reads.")
    layers: int = Field(2, ge=1, description="Self-attention blocks of the ranker.")
    heads: int = Field(2, ge=1, description="Attention heads per block (must divide `dim`).")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout inside the ranker.")
    norm: Literal["pre", "post"] = Field(
        "pre", description="Layer norm before each block's sub-layers (pre) or after each residual sum (post)."
    )
    ffn_factor: int = Field(1, ge=1, description="Width of each block's feed-forward net, in multiples of `dim`.")
    filter_mix: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Weight of the causal low-pass filter mixed with self-attention in every block (0: attention "
        "only; `model/ranker.py`).",
    )
    positions: Literal["absolute", "relative"] = Field(
        "absolute",
        description="Positional embeddings aligned to the most recent item (absolute) or a learned attention bias "
        "per query-key distance (relative).",
    )
    # --- optimisation ----------------------------------------------------------------------------------------
    lr: float = Field(
        2e-3, gt=0, description="Adam learning rate; with full-softmax CE 2e-3 converges in half the epochs of 1e-3."
    )
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay.")
    batch_size: int = Field(
        128,
        ge=1,
        description="Training windows per batch; 128 reaches 256's held-out quality in a fifth to a third fewer "
        "epochs on Beauty, Sports and Yelp (README, training time).",
    )
    max_epochs: int = Field(200, ge=1, description="Most epochs; early stopping usually ends training first.")
    patience: int = Field(
        3,
        ge=1,
        description="Epochs without a better validation NDCG@10 before stopping (3 keeps the best epoch 5 chose in "
        "all 15 runs of bench_model_choices.py on three datasets, two epochs sooner).",
    )
    seed: int = Field(0, description="Seed of every random choice (initialisation, batches, sampling, ties).")
    weight_average_epochs: float = Field(
        0.0,
        ge=0,
        description="Time constant, in epochs, of an exponential moving average of the weights taken over the "
        "full-softmax epochs (`model/weight_average.py`): early stopping scores the average and training publishes "
        "it. 0: the last step's weights. At 1 the early-stopped ranker gained 3.5 to 3.6 % NDCG@10 on held-out "
        "items of Beauty and Sports, the served blend within noise, and early stopping came up to 5 epochs later "
        "(README).",
    )
    refit: bool = Field(
        True,
        description="After early stopping on the validation split, train a fresh model for the chosen number of "
        "epochs on every interaction before each user's test item (the validation items included) and publish it: "
        "the served model then learns each user's latest transition too (+23 to +31 % NDCG@10 on held-out items, "
        "README). The item-kNN blend weight stays the one chosen on validation, and so do the manifest's "
        "validation figures; training takes up to twice as long. false publishes the early-stopped model.",
    )
    refit_epochs: int | None = Field(
        None,
        ge=1,
        description="With `refit`: unset trains a fresh model for as many epochs as early stopping chose; a number "
        "trains the early-stopped model on for that many more epochs instead (a fraction of the time).",
    )
    refit_resume: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="With `refit` (and `refit_epochs` unset): the share of the chosen epochs the refit takes from "
        "the first fit. It resumes the first fit's weights after epoch ⌊share · best⌋ and trains the remaining "
        "epochs on every interaction, the validation items included; until early stopping ends, the epochs it may "
        "resume from are kept in a temporary directory (about (1 − share) · epochs copies of the weights). 0 "
        "trains a fresh model for all of them; 0.5 on Yelp's held-out items: 4 % lower ranker NDCG@10 for half the "
        "refit's epochs (README, training time).",
    )
    validation_users: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of the users (drawn with `seed`) whose validation item alone is held out, for early "
        "stopping and the item-kNN blend; every other user's validation item is trained on from the first epoch, "
        "so the one early-stopped model learns the latest transitions and is published without a refit (`refit` "
        "is then ignored). 0 holds out every user's validation item and refits as `refit` says.",
    )
    time_budget_s: float | None = Field(
        None, gt=0, description="Stop after the epoch that exceeds this many seconds (the best epoch is kept)."
    )
    torch_threads: int | None = Field(None, ge=1, description="Torch CPU threads; unset: 2.")
    # --- what the model learns from ---------------------------------------------------------------------------
    event_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS),
        description="Weight of each event type in the interest vector (serving's `event_weights` wins in "
        "`streamrec train`).",
    )
    half_life_s: float = Field(
        DEFAULT_HALF_LIFE_S, gt=0, description="Event-time half-life of interest (serving's wins in `streamrec train`)."
    )
    retrieval_loss_weight: float = Field(
        1.0, ge=0, description="Weight of the interest-vector (retrieval) loss next to the ranker's."
    )
    min_item_count: int = Field(1, ge=1, description="Items with fewer events are left out of the vocabulary.")
    hold_out_items: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of the items kept out of training entirely, every event on them removed (drawn with "
        "`seed`): the cold-start item protocol, which `streamrec eval` then measures on their events. 0 trains "
        "on every item; never set it for a model to serve.",
    )
    # --- the loss over the catalogue ----------------------------------------------------------------------------
    softmax: Literal["auto", "full", "sampled"] = Field(
        "auto",
        description="Loss over the catalogue: full (every item scored), sampled (shared negatives, log-Q "
        "corrected) or auto (full up to `full_softmax_max_items` items).",
    )
    full_softmax_max_items: int = Field(
        FULL_SOFTMAX_MAX_ITEMS,
        ge=0,
        description="Largest catalogue `softmax` auto trains with the full softmax (its time per epoch grows with "
        "the items). Where it fits it wins: the sampled softmax lost 10-14 % of validation NDCG@10 on Amazon Sports "
        "and Yelp, 3-5 % on Beauty.",
    )
    softmax_precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="Precision of the full softmax's products over the catalogue (sums and the softmax itself stay "
        "float32): auto takes bfloat16 where the CPU multiplies it natively (AVX512-BF16, AMX), about 2x faster "
        "training on such CPUs, and float32 elsewhere.",
    )
    retrieval_share: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Share of a batch's target positions (drawn at random) on which the interest-vector loss is "
        "computed: an unbiased estimate of its mean over all of them, at that share of its full softmax's cost.",
    )
    retrieval_softmax: Literal["same", "sampled"] = Field(
        "same",
        description="Loss of the interest-vector query: the ranker's (`softmax`), or a sampled softmax of its own "
        "(`sampled_negatives`, log-Q corrected) that costs a fraction of a full one.",
    )
    sampled_warmup_epochs: int = Field(
        8,
        ge=0,
        description="Epochs a fresh model trains with the sampled softmax (both losses, `sampled_negatives` shared "
        "negatives, log-Q corrected) before the full softmax takes over; early stopping scores only the epochs after "
        "it. Chosen on validation (README, training time): as good as no warm-up on Beauty, Sports and Yelp, and "
        "Yelp trains in less than half the time. Counts the refit's epochs too; ignored where the softmax is sampled "
        "anyway or `sampled_negatives` covers the catalogue. 0: the full softmax from the first epoch.",
    )
    sampled_negatives: int = Field(
        SAMPLED_NEGATIVES, ge=1, description="Negatives shared by the positions of a batch in the sampled softmax."
    )
    sparse_table_min_items: int = Field(
        SPARSE_TABLE_MIN_ITEMS,
        ge=0,
        description="From this many items on, the sampled softmax updates the item table sparsely (SparseAdam on "
        "the rows a batch read): a dense Adam step costs about 0.4 s per million rows on 2 cores. Below, dense Adam, "
        "which converged faster on the Taobao head.",
    )
    negative_popularity_share: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Share of the negatives drawn by training-target frequency (like in-batch negatives); the "
        "rest are drawn uniformly.",
    )
    # --- the index ---------------------------------------------------------------------------------------------
    index_kind: IndexKindOrAuto = Field(
        "auto",
        description="FAISS index: auto (flat under 5,000 items, hnsw under 100,000, ivfpq above), hnsw, flat, ivf, "
        "ivfpq.",
    )
    hnsw_m: int = Field(32, ge=2, description="HNSW graph degree.")
    ef_construction: int = Field(200, ge=1, description="HNSW build breadth.")
    ivf_nlist: int | None = Field(
        None,
        ge=1,
        description="Cells of ivf / ivfpq indexes; unset: about 4·sqrt(items) for ivf, sqrt(items)/4 for ivfpq.",
    )
    ef_search: int = Field(DEFAULT_EF_SEARCH, ge=1, description="HNSW search breadth recorded for serving.")
    nprobe: int | None = Field(
        None,
        ge=1,
        description="Cells searched by ivf / ivfpq, recorded for serving; unset: 16 for ivf, 5/8 of the "
        "cells for ivfpq.",
    )
    rerank_factor: int = Field(
        DEFAULT_RERANK_FACTOR, ge=1, description="ivfpq re-scores this many times k of its best code matches exactly."
    )
    n_candidates: int = Field(
        DEFAULT_N_CANDIDATES, ge=1, description="Retrieval candidates re-ranked in the retrieve→rerank test metric."
    )
    eval_batch_size: int = Field(512, ge=1, description="Users scored at once in evaluation.")
    eval_max_scores: int = Field(
        EVAL_MAX_SCORES,
        ge=1,
        description="Most user × item scores of one evaluation pass (validation each epoch, test): above, a seeded "
        "sample of users is evaluated, the same in every pass.",
    )
    # --- the item-kNN blend ------------------------------------------------------------------------------------
    blend_weights: tuple[float, ...] = Field(
        (0.0, 2.0, 4.0, 8.0, 16.0, 24.0, 32.0),
        description="Grid of weights of the item-kNN score added to the ranker's logits, picked by validation "
        "NDCG@10; empty or (0,) serves the ranker alone.",
    )
    item_knn_recency: tuple[tuple[int, float], ...] = Field(
        ((3, 0.6), (10, 0.8), (50, 1.0)),
        description="The item-kNN's memories to choose from, as (recent items it scores from, weight decay per "
        "step back) pairs, picked together with the blend weight by validation NDCG@10: a short memory where "
        "the next item follows the last few (Beauty), the whole history where taste is steady (Yelp; README).",
    )
    item_knn_transition_weights: tuple[float, ...] = Field(
        (0.0, 1.0, 2.0, 4.0, 8.0),
        description="Grid of weights of the directed transitions added to the item-kNN's cosine similarity (how "
        "often an item came 1 to 3 interactions after another, normalised), picked with the memory and the blend "
        "weight by validation NDCG@10: where shoppers move through the catalogue in an order the next item is "
        "told from the merely related ones (Beauty, Sports; README). Empty or (0,) keeps the cosine alone.",
    )
    item_knn_max_neighbors: int | None = Field(
        200, ge=1, description="Neighbours kept per item in the served item-kNN (bounds its memory); unset: all."
    )
    # --- segments and content ----------------------------------------------------------------------------------
    n_segments: int = Field(16, ge=0, description="K-means segments of user interest vectors (trending per segment).")
    n_item_clusters: int = Field(0, ge=0, description="K-means clusters of items; 0: about sqrt(n_items / 2).")
    content_encoder: str = Field(
        "auto",
        description="Text model of new items: auto (hashed words, and MiniLM too when the `text` extra is "
        "installed, kept only where it places held-out trained items clearly better: README, new items), minilm, "
        "hashed.",
    )
    content_ridge: float = Field(1.0, ge=0, description="Ridge penalty of the text → item-embedding projection.")
    content_field_values: int = Field(
        2048,
        ge=0,
        description="Catalogue field values (categories, brands, attribute ids) the content projection may give "
        "a column of their own beside the text, the most common first; the training keeps them where they place "
        "a held-out tenth of the trained items clearly better than the text alone (README, new items). 0: text alone.",
    )
    content_fit_max_items: int = Field(
        50_000,
        ge=2,
        description="Most trained items (a seeded sample) whose text fits the content projection: a linear map "
        "from a few hundred text dimensions is settled long before a million items, and encoding every title "
        "with the text model would cost more than the training on 2 cores.",
    )

    @field_validator("event_weights")
    @classmethod
    def _weights_cover_event_types(cls, weights: dict[str, float]) -> dict[str, float]:
        return checked_event_weights(weights)

    @field_validator("blend_weights", "item_knn_transition_weights")
    @classmethod
    def _finite_weights(cls, weights: tuple[float, ...], info: ValidationInfo) -> tuple[float, ...]:
        if any(not 0 <= w < math.inf for w in weights):
            raise ValueError(f"{info.field_name} must be non-negative and finite")
        return weights

    @field_validator("item_knn_recency")
    @classmethod
    def _usable_recency(cls, recency: tuple[tuple[int, float], ...]) -> tuple[tuple[int, float], ...]:
        if not recency or any(n < 1 or not 0 < decay <= 1 for n, decay in recency):
            raise ValueError("item_knn_recency needs at least one (n_recent >= 1, 0 < decay <= 1) pair")
        return recency

    @property
    def blends(self) -> bool:
        """Whether training fits an item-kNN to blend into the served ranker scores."""
        return any(w > 0 for w in self.blend_weights)
