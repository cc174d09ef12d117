import numpy as np

from streamrec.index.item_index import ItemIndex
from streamrec.stream.sources import retrieve_candidates

# Item r's embedding points along axis r with length growing with r, so inner-product order is known exactly.
EMBEDDINGS = np.diag(np.arange(1, 9, dtype=np.float32))


def test_one_search_returns_best_candidates_per_user_without_excluded() -> None:
    index = ItemIndex.build(EMBEDDINGS, kind="flat")
    queries = np.ones((2, 8), dtype=np.float32)
    candidates = retrieve_candidates(index, queries, [set(), {7, 5}], n_candidates=3)
    assert candidates[0].tolist() == [7, 6, 5]
    assert candidates[1].tolist() == [6, 4, 3]  # over-fetched so exclusions do not shorten the list


def test_small_catalog_gives_fewer_candidates_and_empty_batch_gives_none() -> None:
    index = ItemIndex.build(EMBEDDINGS[:3, :], kind="flat")
    found = retrieve_candidates(index, np.ones((1, 8), dtype=np.float32), [{0}], n_candidates=50)
    assert found[0].tolist() == [2, 1]
    assert retrieve_candidates(index, np.zeros((0, 8), dtype=np.float32), [], n_candidates=5) == []
