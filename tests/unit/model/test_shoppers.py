"""The map from a new item's shoppers to its row: fitted where rows are known, served at a trained row's length."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamrec.model.artifacts import ModelArtifacts
from streamrec.model.shoppers import ShopperProjection, learned_rows


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


def test_the_map_survives_a_round_trip_and_a_damaged_file_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    projection = ShopperProjection(
        rng.standard_normal((4, 4)), rng.standard_normal(4), rng.standard_normal(4), 2.0, 0.3
    )
    path = tmp_path / "shoppers.safetensors"
    projection.save(path)
    loaded = ShopperProjection.load(path)
    sums, counts = rng.standard_normal((3, 4)), np.array([1.0, 2.0, 0.0])
    assert np.array_equal(loaded.project(sums, counts), projection.project(sums, counts))
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
