"""The loss over the catalogue: the sampled softmax is the full one when it samples every item, and its log-Q
correction makes it an unbiased stand-in when it does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from streamrec.model.config import TrainConfig
from streamrec.model.softmax import FullSoftmax, SampledSoftmax, retrieval_softmax_for, softmax_for


class Table:
    """An item table as the losses read it (lookups and the whole table)."""

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight

    def item_embedding(self, rows: torch.Tensor) -> torch.Tensor:
        return self.weight[rows]

    def item_embeddings(self) -> torch.Tensor:
        return self.weight


class EmbeddingTable:
    """An item table behind an ``nn.Embedding``, as the ranker holds it."""

    def __init__(self, embedding: torch.nn.Embedding) -> None:
        self.item_embedding = embedding

    def item_embeddings(self) -> torch.Tensor:
        return self.item_embedding.weight


def _problem(n_items: int = 50, positions: int = 12, dim: int = 8, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(positions, dim, generator=generator, requires_grad=True)
    table = torch.randn(n_items, dim, generator=generator, requires_grad=True)
    targets = torch.randint(0, n_items, (positions,), generator=generator)
    return hidden, table, targets


def _gradients(loss: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, tensors))


def test_sampling_every_item_gives_the_full_softmax_loss_and_gradient() -> None:
    hidden, table, targets = _problem()
    counts = np.random.default_rng(0).integers(0, 20, size=50)  # popularity must not matter once all are taken
    sampled = SampledSoftmax(counts, n_negatives=50, popularity_share=0.7, generator=torch.Generator())
    sampled.start_batch()

    exact = F.cross_entropy(hidden @ table.T, targets, reduction="none")
    approximate = sampled.per_position(hidden, targets, Table(table))

    torch.testing.assert_close(approximate, exact)
    mean = torch.full((len(targets),), 1.0 / len(targets))
    for got, want in zip(
        _gradients(sampled.loss(hidden, targets, Table(table), mean), hidden, table),
        _gradients(exact.mean(), hidden, table),
        strict=True,
    ):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(FullSoftmax().loss(hidden, targets, Table(table), mean), exact.mean())


def test_a_negative_equal_to_the_target_is_masked() -> None:
    hidden, table, targets = _problem(n_items=5, positions=3)
    sampled = SampledSoftmax(np.ones(5), n_negatives=2, popularity_share=0.0, generator=torch.Generator())
    sampled.use_negatives(torch.tensor([int(targets[0]), (int(targets[0]) + 1) % 5]), torch.zeros(2))
    loss = sampled.per_position(hidden, targets, Table(table))
    other = table[(int(targets[0]) + 1) % 5]
    positive = hidden[0] @ table[targets[0]] - sampled.log_q(targets[:1])[0]
    # Only the other item competes with the target: a two-way softmax.
    expected = -torch.log_softmax(torch.stack([positive, hidden[0] @ other]), 0)[0]
    torch.testing.assert_close(loss[0], expected)


def test_the_corrected_sample_estimates_the_full_partition_function() -> None:
    """With log-Q correction, E[Σ_j exp(logit_j − log E[count_j])] over the sample equals Σ_all exp(logit)."""
    n_items = 400
    generator = torch.Generator().manual_seed(1)
    logits = torch.linspace(3.0, -3.0, n_items)  # the popular items (high rows) score low
    counts = np.arange(n_items) ** 2  # a skewed popularity
    sampled = SampledSoftmax(counts, n_negatives=256, popularity_share=0.8, generator=generator)
    estimates = []
    for _ in range(400):
        sampled.start_batch()
        estimates.append(torch.exp(logits[sampled.negatives] - sampled.negatives_log_q).sum())
    estimate = torch.stack(estimates).mean()
    assert estimate.item() == pytest.approx(torch.exp(logits).sum().item(), rel=0.03)
    # Without the correction the often-drawn popular items dominate the sum: far off.
    uncorrected = torch.exp(logits[sampled.negatives]).sum() * n_items / 256
    assert uncorrected.item() < 0.5 * torch.exp(logits).sum().item()


def test_negatives_follow_the_mixture_of_popularity_and_uniform() -> None:
    counts = np.zeros(1_000)
    counts[0] = 1.0  # one item is every target
    generator = torch.Generator().manual_seed(0)
    sampled = SampledSoftmax(counts, n_negatives=900, popularity_share=0.5, generator=generator)
    sampled.start_batch()
    share_of_item_0 = (sampled.negatives == 0).float().mean().item()
    assert share_of_item_0 == pytest.approx(0.5 + 0.5 / 1_000, abs=0.05)
    assert len(torch.unique(sampled.negatives)) > 300  # the uniform half reaches the tail


def test_auto_picks_the_full_softmax_up_to_the_configured_size() -> None:
    config = TrainConfig(full_softmax_max_items=100)
    assert softmax_for(config, np.ones(100), seed=0).name == "full"
    assert softmax_for(config, np.ones(101), seed=0).name == "sampled"
    assert softmax_for(TrainConfig(softmax="sampled"), np.ones(10), seed=0).name == "sampled"
    assert softmax_for(TrainConfig(softmax="full", full_softmax_max_items=1), np.ones(10), seed=0).name == "full"


def test_the_interest_vector_shares_the_rankers_softmax_unless_told_to_sample() -> None:
    counts = np.ones(100)
    full = softmax_for(TrainConfig(), counts, seed=0)
    assert retrieval_softmax_for(TrainConfig(), full, counts, seed=0) is full
    sampled_retrieval = retrieval_softmax_for(TrainConfig(retrieval_softmax="sampled"), full, counts, seed=0)
    assert sampled_retrieval.name == "sampled" and sampled_retrieval is not full
    # A sampled ranker loss is shared, so that a batch draws its negatives once.
    both_sampled = TrainConfig(softmax="sampled", retrieval_softmax="sampled")
    sampled = softmax_for(both_sampled, counts, seed=0)
    assert retrieval_softmax_for(both_sampled, sampled, counts, seed=0) is sampled


def test_sparse_table_gradients_match_dense_ones() -> None:
    """The sampled loss reads the table through lookups: a sparse embedding's gradient equals the dense one."""
    hidden, table, targets = _problem(n_items=40)
    counts = np.ones(40)
    grads = []
    for sparse in (False, True):
        embedding = torch.nn.Embedding(40, table.shape[1], sparse=sparse)
        with torch.no_grad():
            embedding.weight.copy_(table)
        sampled = SampledSoftmax(counts, 16, 0.5, torch.Generator().manual_seed(3))
        sampled.start_batch()
        sampled.loss(hidden.detach(), targets, EmbeddingTable(embedding), torch.ones(len(targets))).backward()
        grad = embedding.weight.grad
        grads.append(grad.to_dense() if grad.is_sparse else grad)
        assert grad.is_sparse == sparse
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize(("precision", "tolerance"), [(torch.float32, 1e-5), (torch.bfloat16, 3e-3)])
def test_the_chunked_full_softmax_gives_torch_s_loss_and_gradients(precision: torch.dtype, tolerance: float) -> None:
    # More positions than one chunk holds, and per-position weights as the retrieval loss's masked mean gives.
    hidden, table, targets = _problem(n_items=20_000, positions=150, dim=16)
    with torch.no_grad():
        table /= 4  # logits of the size training sees
    weights = torch.rand(150, generator=torch.Generator().manual_seed(1))
    expected = (F.cross_entropy(hidden @ table.T, targets, reduction="none") * weights).sum()
    loss = FullSoftmax(precision).loss(hidden, targets, Table(table), weights)
    assert torch.allclose(loss, expected, rtol=tolerance)
    # A scaled incoming gradient (a loss weight, a sum with another loss) scales the gradients computed ahead.
    got_gradients = _gradients(3.0 * loss, hidden, table)
    for got, want in zip(got_gradients, _gradients(3.0 * expected, hidden, table), strict=True):
        assert (got - want).norm() <= tolerance * want.norm()


def test_the_full_softmax_s_gradient_in_its_position_weights_is_each_position_s_loss() -> None:
    hidden, table, targets = _problem()
    weights = torch.rand(len(targets), generator=torch.Generator().manual_seed(2), requires_grad=True)
    loss = FullSoftmax().loss(hidden.detach(), targets, Table(table.detach()), weights)
    (got,) = _gradients(loss, weights)
    torch.testing.assert_close(got, F.cross_entropy(hidden @ table.T, targets, reduction="none").detach())


def test_without_gradients_the_full_softmax_only_sums() -> None:
    hidden, table, targets = _problem()
    weights = torch.ones(len(targets))
    with torch.no_grad():
        loss = FullSoftmax().loss(hidden, targets, Table(table), weights)
    torch.testing.assert_close(loss, F.cross_entropy(hidden @ table.T, targets, reduction="sum").detach())
