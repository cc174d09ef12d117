"""The map from a new item's shoppers to its row: fitted where rows are known, served at a trained row's length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from streamrec.model.artifacts import ModelArtifacts
from streamrec.model.shoppers import SHOPPER_COUNTS, ShopperProjection, count_slots, learned_rows


def test_the_shoppers_map_is_fitted_where_rows_are_known_and_measured_on_held_out_items() -> None:
    rng = np.random.default_rng(0)
    states = rng.standard_normal((400, 8))
    true_map = rng.standard_normal((8, 8))
    population = np.full(8, 0.5)
    rows = (states - population) @ true_map
    counts = rng.integers(1, 5, 400).astype(float)
    projection = ShopperProjection.fit(states * counts[:, None], counts, population, rows)
    assert projection.quality["holdout_cosine"] > 0.99 and projection.quality["items"] == 400
    projected = projection.project(states[:3] * 2, np.full(3, 2.0))
    everyone = population / np.linalg.norm(population)
    assert np.allclose(projected @ everyone, projection.typical_reach)  # no more reach than a typical trained row
    assert projection.typical_reach == pytest.approx(np.median(rows @ everyone))
    specific = projected - np.outer(projected @ everyone, everyone)
    true_specific = rows[:3] - np.outer(rows[:3] @ everyone, everyone)
    cosines = np.sum(specific * true_specific, axis=1) / np.linalg.norm(specific, axis=1)
    assert (cosines / np.linalg.norm(true_specific, axis=1)).min() > 0.95  # the direction of the true rows
    assert not projection.project(states[:1], np.zeros(1)).any()  # no shopper: no row
    assert projection.confidence.min() > 0.99  # an exact map: every count's rows at full length


def test_rows_read_from_few_shoppers_are_served_shorter_by_their_held_out_cosine() -> None:
    rng = np.random.default_rng(2)
    rows = rng.standard_normal((3000, 8))
    counts = rng.choice(np.array(SHOPPER_COUNTS, dtype=float), 3000)
    # A mean of c shoppers' states is the row plus noise shrinking as 1/sqrt(c).
    means = rows + rng.standard_normal((3000, 8)) * 2.0 / np.sqrt(counts)[:, None]
    projection = ShopperProjection.fit(means * counts[:, None], counts, np.zeros(8), rows)
    confidence = projection.confidence
    assert np.all(np.diff(confidence) >= 0) and confidence[0] < 0.6 < 0.9 < confidence[-1] <= 1.0
    for n, share in zip(SHOPPER_COUNTS, confidence, strict=True):
        assert projection.quality[f"holdout_cosine_{n}_shoppers"] == pytest.approx(share, abs=1e-6)
    lengths = np.linalg.norm(projection.project(means[:6] * 3, np.full(6, 3.0)), axis=1)
    assert np.allclose(lengths, projection.target_norm * confidence[1], rtol=1e-5)  # 3 shoppers: the slot of 2


def test_shopper_counts_fall_in_the_slot_of_the_largest_listed_count_not_above_them() -> None:
    assert count_slots(np.array([0, 1, 2, 3, 4, 31, 32, 100])).tolist() == [0, 0, 1, 1, 2, 4, 5, 5]


def test_the_map_survives_a_round_trip_and_a_damaged_file_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    confidence = np.array([0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    projection = ShopperProjection(
        rng.standard_normal((4, 4)), rng.standard_normal(4), rng.standard_normal(4), 2.0, 0.3, {}, confidence
    )
    path = tmp_path / "shoppers.safetensors"
    projection.save(path)
    loaded = ShopperProjection.load(path)
    sums, counts = rng.standard_normal((3, 4)), np.array([1.0, 2.0, 0.0])
    assert np.array_equal(loaded.project(sums, counts), projection.project(sums, counts))
    assert np.allclose(loaded.confidence, confidence)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="cannot read shopper projection"):
        ShopperProjection.load(path)


def test_a_model_trained_with_a_catalogue_holds_a_map_of_its_own_width(artifacts: ModelArtifacts) -> None:
    shoppers = artifacts.shoppers
    assert shoppers is not None and shoppers.dim == artifacts.dim
    assert artifacts.manifest["shoppers"]["quality"]["items"] > 0
    # The map says more than the mean item about a held-out trained item's row.
    quality = shoppers.quality
    assert quality["holdout_cosine"] > quality["holdout_cosine_mean_item"]


def test_shoppers_move_a_new_item_from_its_text_to_their_row_as_their_count_grows() -> None:
    content = np.array([[2.0, 0.0], [0.0, 0.0], [0.0, 0.0], [2.0, 0.0]], dtype=np.float32)
    shoppers = np.array([[0.0, 4.0], [0.0, 3.0], [0.0, 0.0], [0.0, 4.0]], dtype=np.float32)
    rows = learned_rows(content, shoppers, np.array([0.0, 3.0, 0.0, 1.0]), prior=1.0)
    assert rows[0].tolist() == [2.0, 0.0]  # no shopper yet: its text alone
    assert rows[1].tolist() == [0.0, 3.0]  # no text: its shoppers alone
    assert rows[2].tolist() == [0.0, 0.0]  # neither: no row, never recommended
    assert rows[3].tolist() == [1.0, 2.0]  # one shopper weighs as much as the text (prior 1)


def test_a_map_written_before_the_confidence_is_served_at_full_length(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    tensors = {"weights": rng.standard_normal((4, 4)), "bias": np.zeros(4), "population_mean": np.ones(4)}
    metadata = {
        "format": "streamrec.shopper_projection",
        "format_version": "1",
        "target_norm": "2.0",
        "typical_reach": "0.5",
        "quality": "{}",
    }
    path = tmp_path / "shoppers.safetensors"
    save_file({name: value.astype(np.float32) for name, value in tensors.items()}, str(path), metadata=metadata)
    loaded = ShopperProjection.load(path)
    assert loaded.confidence.tolist() == [1.0] * len(SHOPPER_COUNTS)
    full_length = ShopperProjection(tensors["weights"], tensors["bias"], tensors["population_mean"], 2.0, 0.5)
    newer = tmp_path / "newer.safetensors"  # today's version must carry its confidence
    save_file({n: v.astype(np.float32) for n, v in tensors.items()}, str(newer), metadata | {"format_version": "2"})
    with pytest.raises(ValueError, match="invalid shopper projection"):
        ShopperProjection.load(newer)
    sums = rng.standard_normal((2, 4))
    assert np.allclose(loaded.project(sums, np.ones(2)), full_length.project(sums, np.ones(2)))


def test_optimism_serves_rows_between_their_expected_and_their_full_length() -> None:
    rng = np.random.default_rng(4)
    confidence = np.array([0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    cautious = ShopperProjection(np.eye(4), np.zeros(4), np.zeros(4), 2.0, 0.0, {}, confidence)
    sums, counts = rng.standard_normal((2, 4)), np.array([1.0, 32.0])
    halfway = cautious.with_optimism(0.5)
    assert np.allclose(halfway.confidence, [0.6, 0.65, 0.7, 0.75, 0.8, 0.85])
    assert np.allclose(np.linalg.norm(halfway.project(sums, counts), axis=1), [1.2, 1.7])
    assert np.allclose(np.linalg.norm(cautious.with_optimism(1.0).project(sums, counts), axis=1), 2.0)
