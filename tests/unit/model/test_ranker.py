"""The sequence ranker's contract with the worker: left-padded histories in, finite scores out."""

from __future__ import annotations

import pytest
import torch

from streamrec.model.ranker import PAD, RankerConfig, SequenceRanker

N_ITEMS = 30


ARCHITECTURES = {
    "pre-norm attention": {},
    "post-norm, wide feed-forward": {"norm": "post", "ffn_factor": 4},
    "attention mixed with the low-pass filter": {"filter_mix": 0.7},
    "relative positions": {"positions": "relative"},
    "post-norm filter mix with relative positions": {"norm": "post", "filter_mix": 0.5, "positions": "relative"},
}


@pytest.fixture(params=list(ARCHITECTURES.values()), ids=list(ARCHITECTURES))
def ranker(request: pytest.FixtureRequest) -> SequenceRanker:
    torch.manual_seed(0)
    config = RankerConfig(n_items=N_ITEMS, dim=16, max_len=8, n_layers=2, n_heads=2, **request.param)
    return SequenceRanker(config).eval()


def left_pad(rows: list[list[int]], width: int) -> torch.Tensor:
    return torch.tensor([[PAD] * (width - len(r)) + r for r in rows], dtype=torch.int64)


def test_config_validates_and_round_trips() -> None:
    config = RankerConfig(n_items=5, dim=8, n_heads=4)
    assert RankerConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError):
        RankerConfig(n_items=5, dim=10, n_heads=4)
    with pytest.raises(ValueError):
        RankerConfig(n_items=0)
    with pytest.raises(ValueError):
        RankerConfig(n_items=5, filter_mix=1.5)


def test_a_manifest_from_before_the_architecture_fields_loads_the_architecture_it_was_trained_with() -> None:
    old = {"n_items": 5, "dim": 8, "max_len": 4, "n_layers": 1, "n_heads": 2, "dropout": 0.2}
    config = RankerConfig.from_dict(old)
    assert (config.norm, config.ffn_factor, config.filter_mix, config.positions) == ("pre", 1, 0.0, "absolute")
    names = set(SequenceRanker(config).state_dict())
    assert "position_embedding.weight" in names and not any("low_pass" in name for name in names)


def test_shapes(ranker: SequenceRanker) -> None:
    history = left_pad([[1, 2, 3], [4]], 5)
    assert ranker.encode(history).shape == (2, 16)
    assert ranker.forward(history).shape == (2, 5, 16)
    assert ranker.score(history, torch.tensor([[0, 1, 2], [3, 4, 5]])).shape == (2, 3)
    assert ranker.score_all(history).shape == (2, N_ITEMS)
    assert ranker.item_embeddings().shape == (N_ITEMS, 16)


def test_extra_left_padding_does_not_change_the_user_vector(ranker: SequenceRanker) -> None:
    short = ranker.encode(left_pad([[1, 2, 3]], 3))
    padded = ranker.encode(left_pad([[1, 2, 3]], 8))
    assert torch.allclose(short, padded, atol=1e-5)


def test_histories_longer_than_max_len_keep_the_most_recent_items(ranker: SequenceRanker) -> None:
    recent = list(range(10, 18))  # exactly max_len items
    long = ranker.encode(torch.tensor([[1, 2, 3, 4, *recent]]))
    assert torch.allclose(long, ranker.encode(torch.tensor([recent])), atol=1e-5)


def test_all_padding_and_empty_histories_give_zero_vectors(ranker: SequenceRanker) -> None:
    history = left_pad([[], [5, 6]], 4)
    users = ranker.encode(history)
    assert torch.equal(users[0], torch.zeros(16))
    assert users[1].abs().sum() > 0
    assert torch.isfinite(ranker.score_all(history)).all()
    assert ranker.encode(torch.empty((3, 0), dtype=torch.int64)).abs().sum() == 0
    ranker.train()  # dropout on, still no NaN
    assert torch.isfinite(ranker.forward(history)).all()


def test_unknown_items_inside_a_history_are_skipped(ranker: SequenceRanker) -> None:
    # A trailing -1 (right padding or an unknown latest item) falls back to the last real item's state.
    trailing = ranker.encode(torch.tensor([[PAD, 1, 2, PAD]]))
    assert torch.isfinite(trailing).all() and trailing.abs().sum() > 0


def test_attention_is_causal(ranker: SequenceRanker) -> None:
    a = ranker.forward(torch.tensor([[1, 2, 3, 4]]))
    b = ranker.forward(torch.tensor([[1, 2, 3, 9]]))
    assert torch.allclose(a[:, :3], b[:, :3], atol=1e-5)
    assert not torch.allclose(a[:, 3], b[:, 3])


def test_score_is_the_inner_product_with_the_item_table(ranker: SequenceRanker) -> None:
    history = left_pad([[1, 2], [3, 4, 5]], 3)
    candidates = torch.tensor([[7, 8, PAD], [0, 29, 1]])
    scores = ranker.score(history, candidates)
    expected = ranker.score_all(history)
    assert torch.allclose(scores[0, :2], expected[0, [7, 8]], atol=1e-5)
    assert torch.allclose(scores[1], expected[1, [0, 29, 1]], atol=1e-5)
    assert scores[0, 2] == float("-inf")


def test_the_padding_row_stays_zero_and_gradients_reach_the_table(ranker: SequenceRanker) -> None:
    ranker.train()
    history = left_pad([[1, 2, 3]], 5)
    loss = torch.nn.functional.cross_entropy(
        ranker.forward(history)[:, -1] @ ranker.item_embeddings().T, torch.tensor([4])
    )
    loss.backward()
    grad = ranker.item_embedding.weight.grad
    assert grad is not None and grad[4].abs().sum() > 0
    assert grad[N_ITEMS].abs().sum() == 0
    assert ranker.item_embedding.weight[N_ITEMS].abs().sum() == 0


@pytest.mark.parametrize("positions", ["absolute", "relative"])
def test_relative_positions_make_every_training_position_what_serving_computes(positions: str) -> None:
    # Training reads the state at every position of a window; serving reads the last position of the history
    # that ends there. Relative positions (and the causal filter) make the two the same state; absolute
    # positions, aligned to the window's end, give an earlier position other embeddings than serving does.
    torch.manual_seed(0)
    config = RankerConfig(n_items=N_ITEMS, dim=16, max_len=8, filter_mix=0.5, positions=positions)
    ranker = SequenceRanker(config).eval()
    window = ranker.forward(torch.tensor([[1, 2, 3, 4, 5]]))
    served = ranker.encode(torch.tensor([[1, 2, 3]]))
    assert torch.allclose(window[0, 2], served[0], atol=1e-5) == (positions == "relative")


def test_the_low_pass_filter_reads_only_earlier_items_and_skips_padding() -> None:
    torch.manual_seed(0)
    ranker = SequenceRanker(RankerConfig(n_items=N_ITEMS, dim=16, max_len=8, n_layers=1, filter_mix=1.0)).eval()
    a = ranker.forward(left_pad([[1, 2, 3, 4]], 6))
    b = ranker.forward(left_pad([[1, 2, 3, 9]], 6))
    assert torch.allclose(a[:, :5], b[:, :5], atol=1e-5) and not torch.allclose(a[:, 5], b[:, 5])
    assert torch.allclose(ranker.encode(left_pad([[1, 2, 3]], 8)), ranker.encode(left_pad([[1, 2, 3]], 3)), atol=1e-5)
