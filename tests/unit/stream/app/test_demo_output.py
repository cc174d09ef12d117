"""The demo prints lists a person can read: titles, reasons, and what changed since the user's last list."""

from __future__ import annotations

from streamrec.stream.app.demo import format_list

TITLES = {"i1": "Red Shoes", "i2": "Blue Socks", "i3": "Green Hat", "i4": "Grey Scarf"}


def _message(items: list[str], variant: str = "default") -> dict:
    return {
        "user_id": "u7",
        "variant": variant,
        "trigger": {"item_id": "i1", "event_type": "cart", "ts": 1.0},
        "items": [
            {
                "item_id": item,
                "reason": f"Similar to “Red Shoes”, which you added to your cart ({item})",
                "explore": item == "i9",
            }
            for item in items
        ],
    }


def test_a_first_list_names_the_items_and_the_reasons() -> None:
    text = format_list(1, _message(["i2", "i3", "i9"]), TITLES, None, 4.25)
    assert text.splitlines()[0] == "#1 user u7 added to cart “Red Shoes” → 4.2 ms"
    assert "   1. Blue Socks — Similar to “Red Shoes”" in text
    assert "3. i9 — " in text and "(exploring)" in text  # no title: the id stands in
    assert text.splitlines()[-1] == "  first list for this user (3 items)"


def test_a_later_list_marks_new_items_and_counts_the_changes() -> None:
    text = format_list(2, _message(["i2", "i4"], variant="b"), TITLES, ["i2", "i3"], 1.0)
    assert "variant b" in text.splitlines()[0]
    assert "   1. Blue Socks" in text and "  +2. Grey Scarf" in text
    assert text.splitlines()[-1] == "  since the last list: 1 new (+), 1 dropped, 1 kept"
