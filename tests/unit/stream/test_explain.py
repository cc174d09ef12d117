from __future__ import annotations

import numpy as np

from streamrec.index.item_index import unit_rows
from streamrec.stream.explain import ANCHOR_WINDOW, Explainer
from streamrec.stream.filters import ScoredItem
from streamrec.stream.user_state import RecentItem

ROW_OF = {"a": 0, "b": 1, "c": 2, "d": 3, "target": 4}
EMBEDDINGS = np.array(
    [
        [0.0, 1.0, 0.0, 0.0],  # a
        [3.0, 0.2, 0.0, 0.0],  # b: closest in direction to the target, with a larger norm
        [0.0, 0.0, 1.0, 0.0],  # c
        [-1.0, 0.0, 0.0, 0.0],  # d: opposite
        [1.0, 0.1, 0.0, 0.0],  # target
    ],
    dtype=np.float32,
)
TITLES = {"a": "Garden chair", "b": "Red shoe", "target": "Blue shoe"}


class FakeItems:
    def __init__(self, row_of: dict[str, int], embeddings: np.ndarray) -> None:
        self.row_of = row_of
        self._embeddings = embeddings

    @property
    def unit_embeddings(self) -> np.ndarray:
        return unit_rows(self._embeddings)


def explainer(co_occurrence: dict[tuple[int, int], float] | None = None) -> Explainer:
    links = co_occurrence or {}
    return Explainer(
        FakeItems(ROW_OF, EMBEDDINGS),
        co_occurrence=lambda anchors, rows: np.array(
            [links.get((a, r), 0.0) for a, r in zip(anchors, rows, strict=True)]
        ),
        title_of=TITLES.get,
    )


def recent(*entries: tuple[str, str]) -> list[RecentItem]:
    """Oldest first, as ``UserState.recent`` holds them."""
    return [RecentItem(item_id, event_type, float(ts)) for ts, (item_id, event_type) in enumerate(entries)]


def explained(
    item: ScoredItem, history: list[RecentItem], links: dict[tuple[int, int], float] | None = None
) -> tuple[str, str]:
    explainer(links).explain([item], history)
    return item.reason_code, item.reason


HISTORY = recent(("a", "view"), ("b", "buy"), ("c", "click"))


def test_exploration_slots_say_so_whatever_their_source() -> None:
    item = ScoredItem("target", 1.0, "ann", row=4, explore=True)
    assert explained(item, HISTORY) == ("explore", "Something new you might like")


def test_collaborative_sources_point_to_the_recent_item_with_the_largest_co_occurrence() -> None:
    links = {(0, 4): 1.0, (1, 4): 5.0, (2, 4): 2.0}
    for source in ("covisitation", "item_knn"):
        item = ScoredItem("target", 1.0, source, row=4)
        assert explained(item, HISTORY, links) == ("bought_together:b", "Often chosen with “Red shoe”")


def test_bought_together_names_an_untitled_anchor_by_its_id() -> None:
    links = {(2, 4): 9.0}
    item = ScoredItem("target", 1.0, "covisitation", row=4)
    assert explained(item, HISTORY, links) == ("bought_together:c", "Often chosen with item c")


def test_anchor_is_one_of_the_latest_known_items_only() -> None:
    old_favourite = ("a", "buy")
    later = [(item_id, "view") for item_id in ("unknown-1", "b", "c", "b", "d", "unknown-2", "target")]
    history = recent(old_favourite, *later)
    # The latest distinct known items are target, d, b, c: four, so "a" is still inside the window...
    item = ScoredItem("x", 1.0, "covisitation", row=7)
    links = {(0, 7): 10.0, (1, 7): 1.0}
    assert explained(item, history, links)[0] == "bought_together:a"
    # ...but falls out once ANCHOR_WINDOW newer known items follow it.
    newer = [(f"n{i}", "view") for i in range(ANCHOR_WINDOW)]
    items = FakeItems({**ROW_OF, **{f"n{i}": 10 + i for i in range(ANCHOR_WINDOW)}}, EMBEDDINGS)
    explaining = Explainer(
        items,
        co_occurrence=lambda anchors, rows: np.array(
            [links.get((a, r), 0.0) for a, r in zip(anchors, rows, strict=True)]
        ),
        title_of=TITLES.get,
    )
    item = ScoredItem("x", 1.0, "covisitation", row=7)
    explaining.explain([item], recent(old_favourite, *newer))
    # No newer anchor co-occurs with the item at all: the tie goes to the most recent one.
    assert item.reason_code == f"bought_together:n{ANCHOR_WINDOW - 1}"


def test_ann_items_point_to_the_most_similar_recent_item_and_its_event_verb() -> None:
    item = ScoredItem("target", 1.0, "ann", row=4)
    assert explained(item, HISTORY) == ("similar_to_recent:b", "Similar to “Red shoe”, which you bought")


def test_ann_item_never_points_to_itself() -> None:
    history = recent(("a", "view"), ("c", "cart"), ("target", "click"))  # target itself would be the closest
    item = ScoredItem("target", 1.0, "ann", row=4)
    code, reason = explained(item, history)
    assert code == "similar_to_recent:a"
    assert reason == "Similar to “Garden chair”, which you viewed"


def test_ann_reason_uses_the_verb_of_the_anchor_event_type() -> None:
    item = ScoredItem("target", 1.0, "ann", row=4)
    assert explained(item, recent(("b", "cart")))[1] == "Similar to “Red shoe”, which you added to your cart"
    assert explained(item, recent(("b", "click")))[1] == "Similar to “Red shoe”, which you clicked"
    assert explained(item, recent(("b", "wishlist")))[1] == "Similar to “Red shoe”, which you viewed"


def test_trending_sources_name_their_scope() -> None:
    cases = [
        (ScoredItem("t", 1.0, "trending_in", context="shoes"), ("trending_in:shoes", "Trending in shoes")),
        (
            ScoredItem("t", 1.0, "trending_segment", context="3"),
            ("trending_in_segment:3", "Popular right now with shoppers like you"),
        ),
        (ScoredItem("t", 1.0, "trending"), ("trending", "Trending now")),
    ]
    for item, expected in cases:
        assert explained(item, HISTORY) == expected


def test_scoped_trending_without_a_context_is_plain_trending() -> None:
    assert explained(ScoredItem("t", 1.0, "trending_in"), HISTORY)[0] == "trending"
    assert explained(ScoredItem("t", 1.0, "trending_segment"), HISTORY)[0] == "trending"


def test_personal_items_without_a_usable_anchor_are_picked_for_you() -> None:
    unknown_history = recent(("unknown-1", "view"), ("unknown-2", "buy"))
    assert explained(ScoredItem("target", 1.0, "ann", row=4), unknown_history)[0] == "for_you"
    assert explained(ScoredItem("target", 1.0, "covisitation", row=4), [])[0] == "for_you"
    # The only known recent item is the recommended item itself.
    assert explained(ScoredItem("target", 1.0, "ann", row=4), recent(("target", "view")))[0] == "for_you"
    # An item the model does not know has no row to compare.
    assert explained(ScoredItem("new", 1.0, "item_knn", row=-1), HISTORY)[0] == "for_you"


def test_explain_fills_every_item_of_the_list() -> None:
    items = [
        ScoredItem("target", 1.0, "ann", row=4),
        ScoredItem("x", 0.5, "trending_in", context="bags"),
        ScoredItem("y", 0.4, "explore", explore=True),
    ]
    explainer().explain(items, HISTORY)
    assert [item.reason_code for item in items] == ["similar_to_recent:b", "trending_in:bags", "explore"]
    assert all(item.reason for item in items)
