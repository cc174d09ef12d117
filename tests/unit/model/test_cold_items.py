"""The cold-start item protocol: the hold-out keeps every event of the new items out of training, and the ranks
of the new items' interactions reward a placement that knows what the item is."""

from __future__ import annotations

import numpy as np
import pytest

from streamrec.model.artifacts import load_artifacts
from streamrec.model.cold_items import (
    HeldOutItems,
    _Shoppers,
    cold_targets,
    evaluate_cold_items,
    popularity_before,
)
from streamrec.model.config import TrainConfig
from streamrec.model.content import embed_items, load_encoder
from streamrec.model.event_log import EventLog
from streamrec.model.events import Event, EventType
from streamrec.model.shoppers import ShopperProjection
from streamrec.model.train import train_artifacts

from .test_train import N_CATEGORIES, PER_CATEGORY, structured_log

CONFIG = TrainConfig(
    dim=32, max_len=20, layers=1, heads=2, batch_size=64, max_epochs=12, patience=3, seed=7, refit=False,
    n_segments=0, content_encoder="hashed",
)  # fmt: skip


def _log(*rows: tuple[str, str, float]) -> EventLog:
    return EventLog.from_events(Event(user, item, EventType.VIEW, ts) for user, item, ts in rows)


def _catalog() -> list[dict[str, str]]:
    """Each item's text names its category (the structure the log's users follow) and little else."""
    return [
        {"item_id": f"i{k}", "title": f"product {k}", "category": f"aisle{k // PER_CATEGORY}"}
        for k in range(N_CATEGORIES * PER_CATEGORY)
    ]


def test_the_held_out_items_are_a_seeded_share_and_none_of_their_events_is_trained_on() -> None:
    log = structured_log(n_users=120)
    held = HeldOutItems.choose(log, 0.2, seed=3)
    assert len(held.items) == round(0.2 * len(set(log.item_ids)))
    assert HeldOutItems.choose(log, 0.2, seed=3) == held
    assert HeldOutItems.choose(log, 0.2, seed=4).items != held.items
    kept = held.remove_from(log)
    assert not set(held.items) & set(kept.item_ids)
    assert len(kept) == int(np.sum(~np.isin(log.item_ids.astype(str), held.items)))
    assert HeldOutItems.recorded(log, held.manifest()) == held


def test_a_model_tied_to_another_hold_out_is_refused() -> None:
    log = structured_log(n_users=120)
    record = HeldOutItems.choose(log, 0.2, seed=3).manifest()
    # The draw depends on the log's distinct items: another catalogue draws other items.
    fewer_items = log.item_ids.astype(str) != "i0"
    other_log = EventLog(
        log.user_ids[fewer_items], log.item_ids[fewer_items], log.event_types[fewer_items], log.timestamps[fewer_items]
    )
    with pytest.raises(ValueError, match="differ"):
        HeldOutItems.recorded(other_log, record)
    with pytest.raises(ValueError, match="between 0 and 1"):
        HeldOutItems.choose(log, 1.0, seed=0)


def test_targets_are_new_item_interactions_after_a_trained_item() -> None:
    log = _log(
        ("u1", "a", 1.0), ("u1", "new1", 2.0), ("u1", "new1", 3.0), ("u1", "b", 4.0), ("u1", "new2", 5.0),
        ("u2", "new1", 1.5), ("u2", "a", 2.5), ("u2", "b", 3.5),
    )  # fmt: skip
    targets = cold_targets(log, {"a": 0, "b": 1}, ["new1", "new2"])
    split = targets.split
    # u1: new1 (one interaction of two events) after a, new2 after a and b; u2's new1 has no trained item before it.
    assert split.items[targets.positions].tolist() == [2, 3]
    assert targets.without_trained_history == 1
    histories = targets.histories(np.arange(2))
    assert [histories.split.items[s:e].tolist() for s, e in zip(histories.starts, histories.ends, strict=True)] == [
        [0],
        [0, 1],
    ]
    assert [e.tolist() for e in targets.excluded(np.arange(2))] == [[0], [0, 1, 2]]
    # Before u1's new1, new1 had u2's interaction; before u1's new2, u2's and u1's own; new2 had none.
    assert popularity_before(targets, np.arange(2)).tolist() == [[1.0, 0.0], [2.0, 0.0]]


@pytest.fixture(scope="module")
def cold_run(tmp_path_factory: pytest.TempPathFactory):
    log = structured_log()
    held = HeldOutItems.choose(log, 0.2, seed=0)
    directory = train_artifacts(
        held.remove_from(log), tmp_path_factory.mktemp("cold"), CONFIG, progress=False, catalog=_catalog()
    )
    return log, held, load_artifacts(directory)


def test_content_places_new_items_where_their_shoppers_look_and_random_does_not(cold_run) -> None:
    log, held, artifacts = cold_run
    assert artifacts.content is not None
    records = {record["item_id"]: record for record in _catalog()}
    rows = embed_items(
        [records[item] for item in held.items], load_encoder(artifacts.content.encoder_name), artifacts.content
    )
    report = evaluate_cold_items(log, artifacts, held, rows)
    assert report["targets"] > 100 and report["new_items_with_content"] == len(held.items)
    results = report["results"]
    # 24 new items, 4 or so per aisle: knowing the aisle puts the target among the first 10 new items.
    assert results["content"]["among_new"]["HR@10"] > results["random"]["among_new"]["HR@10"] + 0.2
    assert results["content"]["catalogue"]["NDCG@10"] > results["random"]["catalogue"]["NDCG@10"]
    assert set(results["popularity"]) == {"among_new"}


def test_items_without_text_are_never_ranked_and_a_model_that_saw_them_is_refused(cold_run) -> None:
    log, held, artifacts = cold_run
    no_text = np.zeros((len(held.items), artifacts.dim), dtype=np.float32)
    report = evaluate_cold_items(log, artifacts, held, no_text)
    assert report["new_items_with_content"] == 0
    assert report["results"]["content"]["among_new"]["HR@10"] == 0.0
    other = HeldOutItems.choose(log, 0.2, seed=1)
    with pytest.raises(ValueError, match="trained on"):
        evaluate_cold_items(log, artifacts, other, None)


def test_a_row_learns_only_from_interactions_before_the_moment_it_is_used() -> None:
    identity = ShopperProjection(np.eye(2), np.zeros(2), np.zeros(2), target_norm=3.0)
    shoppers = _Shoppers(None, n_new=2, projection=identity, prior=1.0)
    shoppers.seen(np.array([5.0, 7.0]), np.array([0, 1]), np.array([[0.0, 3.0], [3.0, 0.0]]))
    assert shoppers.rows_before(5.0).tolist() == [[0.0, 0.0], [0.0, 0.0]]  # the same moment is not "before"
    assert shoppers.rows_before(6.0).tolist() == [[0.0, 3.0], [0.0, 0.0]]
    assert shoppers.rows_before(8.0).tolist() == [[0.0, 3.0], [3.0, 0.0]]


def test_the_first_shoppers_place_a_new_item_without_any_text(cold_run) -> None:
    log, held, artifacts = cold_run
    no_text = np.zeros((len(held.items), artifacts.dim), dtype=np.float32)
    # 145 targets: rows refreshed every 8 of them, as a worker re-embeds every few events.
    results = evaluate_cold_items(log, artifacts, held, no_text, batch_targets=8)["results"]
    assert results["content"]["among_new"]["HR@10"] == 0.0  # no text: content never ranks them
    assert results["content+shoppers"]["among_new"]["HR@10"] > results["random"]["among_new"]["HR@10"] + 0.2
    assert results["content+shoppers"]["catalogue"]["HR@10"] > results["random"]["catalogue"]["HR@10"] + 0.2
