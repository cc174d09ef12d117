"""The training loss over the catalogue: a full softmax, or a sampled one whose cost does not grow with it.

Both losses score a batch's target positions (hidden states ``[P, dim]``) against item embeddings and return the
sum of the positions' cross-entropies weighted per position (a mean, a masked mean).

* :class:`FullSoftmax` scores every item: exact, and best where it fits (``[P, n_items]`` logits per loss).
* :class:`SampledSoftmax` scores each position's own target and ``K`` negatives shared by the whole batch, drawn
  with replacement from a mix of the uniform distribution (the long tail) and the training targets' frequency
  (what in-batch negatives would give, without the ``P × P`` cost). Every logit is corrected by the log of the
  item's expected count in the sample (the log-Q correction of Bengio & Senécal, Jean et al.; Yi et al. 2019 for
  recommendation): without it popular items, sampled often, would be pushed down too far. A negative that is the
  position's own target (an accidental hit) is masked. The logits are ``[P, 1 + K]`` whatever the catalogue's
  size. When ``K`` reaches the catalogue every item is taken exactly once with expected count 1: the loss, and
  its gradient, are then the full softmax's.

:func:`softmax_for` picks one from the training configuration (``auto``: the full softmax up to
``full_softmax_max_items`` items).
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from streamrec.model.config import TrainConfig


class ItemTable(Protocol):
    """The model's item table, as the losses read it."""

    def item_embedding(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows of the table (a lookup: its gradient may be sparse)."""
        ...

    def item_embeddings(self) -> torch.Tensor:
        """The whole table ``[n_items, dim]``."""
        ...


CHUNK_SCORES = 1 << 19
"""Logits the full softmax holds at once (2 MiB of float32): a chunk stays in the CPU's cache between the
product that makes it and the softmax that reads it, where ``[positions, items]`` logits would stream through
memory several times."""
CHUNK_MIN_ROWS = 32


class _ChunkedCrossEntropy(torch.autograd.Function):
    """``Σ_i weights[i] · cross_entropy(hidden @ table.T, targets)[i]`` computed a chunk of positions at a time, its
    gradients with it.

    A chunk's logits become its softmax in place, and the softmax at once becomes the chunk's share of both
    gradients (``weights[i] · (softmax − one_hot)`` times the other factor): the backward pass only scales them by
    the incoming gradient. Same values and gradients as ``(F.cross_entropy(hidden @ table.T, targets,
    reduction="none") * weights).sum()`` without its ``[P, n_items]`` tensors, and without recomputing the logits
    and their exponentials in a backward pass: the full softmax is bound by memory traffic and ``exp``, not
    arithmetic, on CPUs (the inner dimension is only ``dim``). Without gradients wanted it only sums.

    With ``products`` = bfloat16 the three products over the catalogue take bfloat16 inputs (float32
    accumulation inside the kernel); the log-sum-exp, the softmax and the gradients' sums stay float32. On CPUs
    with native bfloat16 arithmetic that is about 4x faster per product; the gradients differ from float32's by a
    relative 3e-4 (a unit test bounds it).
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        table: torch.Tensor,
        targets: torch.Tensor,
        weights: torch.Tensor,
        products: torch.dtype,
    ) -> torch.Tensor:
        step = max(CHUNK_MIN_ROWS, CHUNK_SCORES // max(1, table.shape[0]))
        left, right = hidden.to(products), table.to(products)
        wants_gradients = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        log_norms = torch.empty(len(hidden), dtype=hidden.dtype)
        grad_hidden = torch.empty_like(hidden) if wants_gradients else None
        grad_table = torch.zeros_like(table) if wants_gradients else None
        for begin in range(0, len(hidden), step):
            rows = slice(begin, begin + step)
            logits = (left[rows] @ right.T).to(hidden.dtype)
            if grad_hidden is None or grad_table is None:
                log_norms[rows] = torch.logsumexp(logits, dim=1)
                continue
            top = logits.amax(dim=1, keepdim=True)
            exponentials = logits.sub_(top).exp_()
            sums = exponentials.sum(dim=1, keepdim=True)
            log_norms[rows] = (top + sums.log()).squeeze(1)
            gradient = exponentials.mul_(weights[rows].unsqueeze(1) / sums).to(products)  # weighted softmax
            grad_hidden[rows] = gradient @ right
            if gradient.dtype == grad_table.dtype:  # summed inside the product: no [n_items, dim] temporary
                grad_table.addmm_(gradient.T, left[rows])
            else:
                grad_table += gradient.T @ left[rows]
        losses = log_norms - (hidden * table[targets]).sum(-1)
        if grad_hidden is not None and grad_table is not None:
            # The one-hot part of softmax − one_hot, for every chunk at once.
            weighted = weights.unsqueeze(1)
            grad_hidden -= weighted * table[targets]
            grad_table.index_add_(0, targets, -weighted * hidden)
        ctx.save_for_backward(grad_hidden, grad_table, losses)
        return (losses * weights).sum()

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_table, losses = ctx.saved_tensors
        return (
            grad_hidden * grad_total if ctx.needs_input_grad[0] else None,
            grad_table * grad_total if ctx.needs_input_grad[1] else None,
            None,
            losses * grad_total if ctx.needs_input_grad[3] else None,
            None,
        )


def native_bfloat16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX): elsewhere it is emulated and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


class FullSoftmax:
    """Cross-entropy over the whole catalogue, its products over the catalogue in ``products`` precision."""

    name = "full"

    def __init__(self, products: torch.dtype = torch.float32) -> None:
        self.products = products
        self.precision = str(products).removeprefix("torch.")

    def start_batch(self) -> None:
        pass

    sparse_gradients = False

    def loss(
        self, hidden: torch.Tensor, targets: torch.Tensor, items: ItemTable, weights: torch.Tensor
    ) -> torch.Tensor:
        """``Σ weights[i] · ℓ_i``: the cross-entropy ``ℓ`` of ``hidden @ E.T`` against ``targets``, weighted per
        position (``1/P`` each gives the mean)."""
        return _ChunkedCrossEntropy.apply(hidden, items.item_embeddings(), targets, weights, self.products)


class SampledSoftmax:
    """Cross-entropy over each target and ``n_negatives`` shared negatives, log-Q corrected.

    It reads only the item rows of the batch, through the embedding lookup, so the item table's gradient can be
    sparse (:attr:`sparse_gradients`): on large catalogues (``sparse_table_min_items``) an optimizer step then
    touches those rows, not the whole catalogue.
    """

    name = "sampled"
    sparse_gradients = True
    precision = "float32"

    def __init__(
        self, target_counts: np.ndarray, n_negatives: int, popularity_share: float, generator: torch.Generator
    ) -> None:
        """``target_counts[i]``: how often item ``i`` is a training target; ``popularity_share``: the share of the
        sampling distribution that follows those counts (the rest is uniform)."""
        n_items = len(target_counts)
        if n_items == 0:
            raise ValueError("no items to sample negatives from")
        counts = torch.as_tensor(target_counts, dtype=torch.float64)
        share = popularity_share if counts.sum() > 0 else 0.0
        frequency = counts / counts.sum().clamp_min(1.0)
        self.probabilities = ((1.0 - share) / n_items + share * frequency).to(torch.float32)
        self.n_items, self.n_negatives, self.generator = n_items, n_negatives, generator
        self.covers_catalogue = n_negatives >= n_items
        self._log_expected = torch.log(self.probabilities * n_negatives)
        self.negatives = torch.arange(n_items)
        self.negatives_log_q = torch.zeros(n_items)
        self._sorted: tuple[torch.Tensor, torch.Tensor] | None = None  # the negatives sorted, and their positions

    def start_batch(self) -> None:
        """Draw the negatives every position of the next batch shares (once for both losses of a batch)."""
        if not self.covers_catalogue:
            negatives = torch.multinomial(self.probabilities, self.n_negatives, True, generator=self.generator)
            self.use_negatives(negatives, self._log_expected[negatives])
        elif self._sorted is None:  # every item once, expected count 1: set once
            self.use_negatives(self.negatives, self.negatives_log_q)

    def use_negatives(self, negatives: torch.Tensor, log_q: torch.Tensor) -> None:
        """Share ``negatives`` (item rows) with log expected counts ``log_q`` until the next draw."""
        self.negatives, self.negatives_log_q = negatives, log_q
        self._sorted = torch.sort(negatives)

    def log_q(self, items: torch.Tensor) -> torch.Tensor:
        """Log of each item's expected count in one batch's sample (0 when the sample is the whole catalogue)."""
        return torch.zeros(items.shape) if self.covers_catalogue else self._log_expected[items]

    def loss(
        self, hidden: torch.Tensor, targets: torch.Tensor, items: ItemTable, weights: torch.Tensor
    ) -> torch.Tensor:
        """``Σ weights[i] · ℓ_i`` over the per-position losses of :meth:`per_position`."""
        return (self.per_position(hidden, targets, items) * weights).sum()

    def per_position(self, hidden: torch.Tensor, targets: torch.Tensor, items: ItemTable) -> torch.Tensor:
        """Per-position cross-entropy ``[P]`` of the target against the batch's negatives.

        Written for the ``[P, 1 + K]`` logits to be touched as few times as possible: the log-Q correction rides
        in the product (``[h, 1] · [e, −log q]``), accidental hits are overwritten in place where they are (found
        by a search in the sorted negatives, not a ``[P, K]`` comparison), and the cross-entropy is PyTorch's
        fused one.
        """
        if self._sorted is None:
            self.start_batch()
        positive = (hidden * items.item_embedding(targets)).sum(-1) - self.log_q(targets)
        corrected = torch.cat([items.item_embedding(self.negatives), -self.negatives_log_q.unsqueeze(1)], dim=1)
        negative = torch.cat([hidden, torch.ones(len(hidden), 1, dtype=hidden.dtype)], dim=1) @ corrected.T
        logits = torch.cat([positive.unsqueeze(1), negative], dim=1)
        rows, columns = self._accidental_hits(targets)
        if len(rows):
            logits.index_put_((rows, columns + 1), torch.tensor(-math.inf, dtype=logits.dtype))
        return F.cross_entropy(logits, torch.zeros(len(targets), dtype=torch.long), reduction="none")

    def _accidental_hits(self, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(position, negative column) of every negative that is the position's own target."""
        assert self._sorted is not None
        values, columns = self._sorted
        first = torch.searchsorted(values, targets)
        counts = torch.searchsorted(values, targets, right=True) - first
        rows = torch.repeat_interleave(torch.arange(len(targets)), counts)
        starts = torch.repeat_interleave(first - (torch.cumsum(counts, 0) - counts), counts)
        return rows, columns[starts + torch.arange(len(rows))]


Softmax = FullSoftmax | SampledSoftmax


def softmax_for(config: TrainConfig, target_counts: np.ndarray, seed: int) -> Softmax:
    """The loss ``config.softmax`` names; ``auto`` takes the full softmax up to ``full_softmax_max_items`` items."""
    n_items = len(target_counts)
    kind = config.softmax
    if kind == "auto":
        kind = "full" if n_items <= config.full_softmax_max_items else "sampled"
    if kind == "full":
        bfloat16 = config.softmax_precision == "bfloat16" or (config.softmax_precision == "auto" and native_bfloat16())
        return FullSoftmax(torch.bfloat16 if bfloat16 else torch.float32)
    return sampled_softmax_for(config, target_counts, seed)


def sampled_softmax_for(config: TrainConfig, target_counts: np.ndarray, seed: int) -> SampledSoftmax:
    """The sampled softmax ``config`` describes (``sampled_negatives``, ``negative_popularity_share``), drawing its
    negatives from its own generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return SampledSoftmax(target_counts, config.sampled_negatives, config.negative_popularity_share, generator)


def retrieval_softmax_for(config: TrainConfig, ranking: Softmax, target_counts: np.ndarray, seed: int) -> Softmax:
    """The interest-vector loss's softmax: ``ranking`` itself, or with ``retrieval_softmax="sampled"`` a sampled
    softmax of its own (``ranking`` again when it is sampled already, so a batch draws its negatives once)."""
    if config.retrieval_softmax == "same" or isinstance(ranking, SampledSoftmax):
        return ranking
    return sampled_softmax_for(config, target_counts, seed + 1)
