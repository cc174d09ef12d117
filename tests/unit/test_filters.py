from stream.filters import ScoredItem, select_top_k


def items(*ids: str, reason: str = "personalized") -> list[ScoredItem]:
    return [ScoredItem(i, 1.0 / (n + 1), reason) for n, i in enumerate(ids)]


def test_excluded_and_duplicate_items_never_pass() -> None:
    chosen = select_top_k(items("a", "b", "a", "c", "d"), {"b": None}, k=3)
    assert [i.item_id for i in chosen] == ["a", "c", "d"]


def test_short_lists_are_topped_up_from_fallback_without_repeats() -> None:
    chosen = select_top_k(items("a"), {"x": None}, k=4, fallback=items("x", "a", "t1", "t2", "t3", reason="trending"))
    assert [(i.item_id, i.reason) for i in chosen] == [
        ("a", "personalized"),
        ("t1", "trending"),
        ("t2", "trending"),
        ("t3", "trending"),
    ]


def test_returns_fewer_than_k_when_nothing_else_is_allowed() -> None:
    assert [i.item_id for i in select_top_k(items("a", "b"), {"a": None}, k=5)] == ["b"]
