"""The item table: trained rows, rows added live, their unit vectors and availability, in step with the index."""

from __future__ import annotations

import numpy as np

from streamrec.index.item_index import unit_rows
from streamrec.model.artifacts import ModelArtifacts
from streamrec.stream.item_table import ItemTable


def test_live_rows_grow_the_table_and_keep_unit_vectors_in_step(artifacts: ModelArtifacts) -> None:
    table = ItemTable(artifacts, max_live_items=2_000)
    trained = table.n_trained
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(1_100, table.dim)).astype(np.float32)  # past the first reservation of 1,024 rows
    rows = [table.add(f"live-{i}", vector) for i, vector in enumerate(vectors)]
    assert rows == list(range(trained, trained + len(vectors)))
    assert len(table) == len(table.index) == trained + len(vectors)
    np.testing.assert_allclose(table.embeddings[trained:], vectors)
    np.testing.assert_allclose(table.unit_embeddings[trained:], unit_rows(vectors), rtol=1e-6)
    np.testing.assert_allclose(table.unit_embeddings[:trained], unit_rows(artifacts.item_embeddings), rtol=1e-6)
    norms = np.linalg.norm(table.unit_embeddings, axis=1)
    assert np.allclose(norms[norms > 0], 1.0, atol=1e-5)


def test_trained_items_keep_their_embedding_and_changed_content_moves_to_a_new_row(artifacts: ModelArtifacts) -> None:
    table = ItemTable(artifacts, max_live_items=2)
    trained_id = artifacts.item_ids[0]
    assert table.add(trained_id, np.ones(table.dim, dtype=np.float32)) is None
    first = table.add("new", np.ones(table.dim, dtype=np.float32))
    second = table.add("new", -np.ones(table.dim, dtype=np.float32))  # its content changed
    assert first is not None and second == first + 1 and table.row_of["new"] == second
    assert not table.index.is_available(first) and table.index.is_available(second)
    assert table.add("one-too-many", np.ones(table.dim, dtype=np.float32)) is None  # max_live_items reached
