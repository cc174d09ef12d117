"""A synthetic shop: a catalog and a time-ordered event stream with the structure real shops show.

Demos and tests need data that a recommender can actually learn from, and whose signal is known:

* **Popularity** is Zipf-shaped across categories and within each category, so a popularity baseline is strong
  but beatable.
* **Taste**: each user likes a few categories (Dirichlet weights) and the mix drifts slowly, so recent events
  predict better than old ones.
* **Sessions** stay mostly within one category and follow the funnel view -> click -> cart -> buy with falling
  probabilities, so event types carry information.
* **Complements**: every item has a few complementary items (accessories in its own category, one in a partner
  category). After a cart the next view is often a complement, and the session after a purchase often starts
  with one, so the *order* of a user's items carries signal that only a sequence model exploits.
* **Few re-purchases**: a user rarely buys the same item twice, which is why the worker filters bought items.

Titles combine category-specific nouns and adjectives with a brand, so a text encoder can tell categories apart
(the cold-start path for new items).

The event loop uses :class:`random.Random` (fast, and stable for a seed across platforms); numpy draws the
catalog. 100,000 events take about a second.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from streamrec.model.events import Event, EventType
from streamrec.stream.app.event_files import write_events_jsonl

DEFAULT_START_TS = 1_767_225_600.0  # 2026-01-01 00:00 UTC
DEFAULT_DURATION_S = 28 * 86_400.0
"""Four weeks: long enough for taste drift and interest half-lives (two days by default) to matter."""


@dataclass(frozen=True)
class _Theme:
    """Words of one kind of product; a category is a theme, optionally narrowed by a segment word."""

    name: str
    nouns: tuple[str, ...]
    adjectives: tuple[str, ...]
    base_price: float
    partner: str  # the theme whose items complement this one's (phones -> audio: earbuds for a phone)


_THEMES: tuple[_Theme, ...] = (
    _Theme("audio", ("Headphones", "Earbuds", "Speaker", "Soundbar", "Amplifier", "Turntable", "Microphone",
                     "Subwoofer"), ("Wireless", "Bluetooth", "Noise-Cancelling", "Hi-Fi"), 80.0, "phones"),
    _Theme("phones", ("Smartphone", "Phone Case", "Screen Protector", "Wall Charger", "Power Bank",
                      "Charging Cable", "Phone Stand", "Car Mount"), ("Fast-Charging", "Magnetic", "USB-C",
                                                                       "Shockproof"), 40.0, "audio"),
    _Theme("computers", ("Laptop", "Keyboard", "Mouse", "Monitor", "Webcam", "Docking Station",
                         "Laptop Sleeve", "SSD"), ("Mechanical", "Ergonomic", "4K", "Portable"), 150.0, "gaming"),
    _Theme("kitchen", ("Chef Knife", "Frying Pan", "Saucepan", "Cutting Board", "Blender", "Kettle", "Toaster",
                       "Spatula"), ("Stainless", "Non-Stick", "Cast-Iron", "Ceramic"), 45.0, "coffee"),
    _Theme("coffee", ("Espresso Machine", "Coffee Grinder", "French Press", "Coffee Beans", "Milk Frother",
                      "Pour-Over Dripper", "Travel Mug", "Espresso Cups"), ("Single-Origin", "Barista", "Burr",
                                                                              "Dark-Roast"), 35.0, "kitchen"),
    _Theme("beauty", ("Face Serum", "Moisturizer", "Lipstick", "Mascara", "Cleanser", "Sunscreen", "Eye Cream",
                      "Sheet Mask"), ("Hydrating", "Vitamin-C", "Matte", "Fragrance-Free"), 25.0, "haircare"),
    _Theme("haircare", ("Shampoo", "Conditioner", "Hair Dryer", "Straightener", "Hair Oil", "Curling Iron",
                        "Hair Brush", "Hair Mask"), ("Keratin", "Ionic", "Argan", "Volumizing"), 30.0, "beauty"),
    _Theme("fitness", ("Yoga Mat", "Dumbbells", "Kettlebell", "Resistance Bands", "Jump Rope", "Foam Roller",
                       "Pull-Up Bar", "Gym Bag"), ("Adjustable", "Non-Slip", "Heavy-Duty", "Foldable"), 40.0,
           "running"),
    _Theme("running", ("Running Shoes", "Running Shorts", "Sports Bra", "Running Socks", "Hydration Vest",
                       "Running Jacket", "Sweatband", "Phone Armband"), ("Breathable", "Lightweight", "Reflective",
                                                                         "Cushioned"), 60.0, "fitness"),
    _Theme("outdoor", ("Tent", "Sleeping Bag", "Hiking Backpack", "Headlamp", "Camping Stove", "Trekking Poles",
                       "Water Filter", "Camp Chair"), ("Waterproof", "Ultralight", "All-Season", "Insulated"),
           90.0, "running"),
    _Theme("garden", ("Garden Hose", "Pruning Shears", "Planter", "Watering Can", "Seed Kit", "Garden Gloves",
                      "Lawn Sprinkler", "Compost Bin"), ("Expandable", "Raised", "Organic", "Galvanized"), 30.0,
           "tools"),
    _Theme("toys", ("Building Blocks", "Jigsaw Puzzle", "Plush Bear", "Toy Car", "Doll House", "Board Game",
                    "Action Figure", "Kite"), ("Educational", "Wooden", "Remote-Control", "Glow-in-the-Dark"),
           25.0, "baby"),
    _Theme("baby", ("Stroller", "Baby Monitor", "Diaper Bag", "High Chair", "Baby Bottle", "Pacifier",
                    "Crib Sheet", "Baby Carrier"), ("Organic-Cotton", "BPA-Free", "Convertible", "Hypoallergenic"),
           60.0, "toys"),
    _Theme("pets", ("Dog Bed", "Cat Tree", "Dog Leash", "Pet Bowl", "Cat Litter", "Chew Toy", "Pet Carrier",
                    "Scratching Post"), ("Orthopedic", "Retractable", "Grain-Free", "Chew-Proof"), 30.0, "home"),
    _Theme("books", ("Novel", "Cookbook", "Biography", "Travel Guide", "Comic Book", "Poetry Collection",
                     "Thriller", "History Book"), ("Hardcover", "Paperback", "Illustrated", "Bestselling"), 18.0,
           "stationery"),
    _Theme("stationery", ("Notebook", "Fountain Pen", "Planner", "Sticky Notes", "Marker Set", "Desk Organizer",
                          "Pencil Case", "Sketchbook"), ("Dotted", "Refillable", "Archival", "Pastel"), 12.0,
           "books"),
    _Theme("home", ("Throw Pillow", "Table Lamp", "Wall Art", "Scented Candle", "Vase", "Picture Frame",
                    "Area Rug", "Wall Clock"), ("Linen", "Minimalist", "Handmade", "Velvet"), 40.0, "bedding"),
    _Theme("bedding", ("Duvet Cover", "Pillow", "Mattress Topper", "Bed Sheets", "Weighted Blanket",
                       "Comforter", "Pillowcase", "Bed Skirt"), ("Memory-Foam", "Bamboo", "Percale", "Cooling"),
           55.0, "home"),
    _Theme("womenswear", ("Dress", "Blouse", "Cardigan", "Skirt", "Handbag", "Scarf", "Ankle Boots", "Jumpsuit"),
           ("Floral", "Silk", "Oversized", "Wrap"), 45.0, "jewelry"),
    _Theme("menswear", ("Oxford Shirt", "Chinos", "Blazer", "Polo Shirt", "Leather Belt", "Hoodie",
                        "Denim Jacket", "Dress Shoes"), ("Slim-Fit", "Merino", "Tailored", "Washed"), 55.0,
           "jewelry"),
    _Theme("jewelry", ("Watch", "Necklace", "Bracelet", "Earrings", "Ring", "Pendant", "Cufflinks",
                       "Watch Strap"), ("Sterling-Silver", "Gold-Plated", "Automatic", "Chronograph"), 70.0,
           "womenswear"),
    _Theme("gaming", ("Game Controller", "Gaming Headset", "Gaming Chair", "Console", "Video Game",
                      "Mouse Pad", "Capture Card", "Racing Wheel"), ("RGB", "Esports", "Low-Latency", "Turbo"),
           60.0, "computers"),
    _Theme("tools", ("Cordless Drill", "Screwdriver Set", "Tape Measure", "Hammer", "Socket Wrench",
                     "Spirit Level", "Utility Knife", "Tool Box"), ("Brushless", "Torque", "Impact-Rated",
                                                                    "Hardened-Steel"), 50.0, "garden"),
    _Theme("automotive", ("Car Wax", "Dash Cam", "Floor Mats", "Tire Inflator", "Jump Starter", "Seat Cover",
                          "Car Vacuum", "Wiper Blades"), ("All-Weather", "Universal-Fit", "12V", "Scratch-Free"),
           35.0, "tools"),
)  # fmt: skip

_SEGMENTS: tuple[str, ...] = ("Kids", "Pro", "Travel", "Eco", "Vintage", "Smart", "Compact", "Luxury")
"""Words that narrow a theme into further categories once every theme is in use ("kitchen-pro")."""

_GENERIC_ADJECTIVES: tuple[str, ...] = ("Classic", "Premium", "Essential", "Everyday", "Deluxe", "Signature")
_COLORS: tuple[str, ...] = ("black", "white", "grey", "navy", "red", "green", "beige", "blue", "pink", "brown")
_SYLLABLES: tuple[str, ...] = ("nor", "vik", "ala", "ber", "cor", "dex", "el", "fin", "gra", "hal", "ion", "jun",
                               "kai", "lum", "mo", "nex", "or", "pra", "qui", "ros", "sol", "tor", "ul", "ven",
                               "wyn", "xa", "yor", "zen")  # fmt: skip
_DEVICES: tuple[str, ...] = ("app", "mobile", "desktop")
_DEVICE_WEIGHTS: tuple[float, ...] = (0.45, 0.4, 0.15)

# Behaviour parameters; the comments say what each one shapes in the data.
_CATEGORY_ZIPF = 0.9  # traffic share of the c-th most popular category ~ 1 / c^0.9
_ITEM_ZIPF = 0.95  # within a category, the r-th most popular item gets ~ 1 / r^0.95 of its views
_P_CLICK = 0.32  # view -> click, scaled by the item's appeal (0.5-1.5)
_P_CART = 0.30  # click -> cart
_P_BUY = 0.45  # cart -> buy
_P_REBUY = 0.03  # cart -> buy when the user already owns the item
_P_FOLLOW_PURCHASE = 0.6  # the session after a purchase opens with a complement of the bought item
_P_COMPLEMENT_AFTER_CART = 0.5  # the next view after a cart is a complement of the carted item
_P_COMPLEMENT_AFTER_VIEW = 0.12  # ... and after a mere view or click
_P_OFF_CATEGORY = 0.1  # a view outside the session's category, drawn from the user's taste
_P_TASTE_DRIFT = 0.08  # per session: a new category enters the user's taste ...
_TASTE_DRIFT_WEIGHT = 0.3  # ... with this share of it
_MEAN_SESSION_VIEWS = 4.0
_MEAN_SESSION_EVENTS = 5.5  # 4 views and their clicks, carts, buys (~5.8), less for sessions cut short
_COMPLEMENT_WEIGHTS = (0.55, 0.3, 0.15)  # the first complement of an item is the most common follow-up
_COMPLEMENT_CUM: tuple[list[float], ...] = tuple(
    list(itertools.accumulate(_COMPLEMENT_WEIGHTS[:n])) for n in range(len(_COMPLEMENT_WEIGHTS) + 1)
)


@dataclass(frozen=True)
class _Catalog:
    """The catalog plus the sampling tables the event loop needs, as plain lists for fast scalar access."""

    records: list[dict[str, Any]]
    category_cum: list[float]  # cumulative traffic weights of the categories
    items_by_category: list[list[int]]  # item indexes of each category, most popular first
    item_cum_by_category: list[list[float]]  # cumulative Zipf weights of those items
    item_category: list[int]
    item_appeal: list[float]
    complements: list[tuple[int, ...]]


@dataclass
class _User:
    """What the event loop tracks per user: taste, purchases, and the item a next session may follow up."""

    index: int
    taste_categories: list[int]
    taste_weights: list[float]
    bought: set[int] = field(default_factory=set)
    last_bought: int | None = None


def simulate_shop(
    n_users: int,
    n_items: int,
    n_events: int,
    seed: int,
    start_ts: float = DEFAULT_START_TS,
    n_categories: int | None = None,
    *,
    duration_s: float = DEFAULT_DURATION_S,
) -> tuple[list[Event], list[dict[str, Any]]]:
    """Simulate ``n_events`` events of up to ``n_users`` users on ``n_items`` items, deterministic per ``seed``.

    Returns the events sorted by time (``event_id`` ``e0``, ``e1``, ... in that order) and the catalog records
    ``{"item_id", "title", "category", "price", "available", "ts", "attributes"}``. Users arrive spread over the
    first 90 % of ``duration_s`` after ``start_ts``; every user has at least one event when
    ``n_events >= n_users``. Large shops are better written with :func:`simulate_to_files`, which holds no
    :class:`Event` objects.
    """
    rows, catalog = _simulate(n_users, n_items, n_events, seed, start_ts, n_categories, duration_s)
    return list(_events(rows, catalog, start_ts)), catalog


def _simulate(
    n_users: int,
    n_items: int,
    n_events: int,
    seed: int,
    start_ts: float,
    n_categories: int | None,
    duration_s: float,
) -> tuple[_Rows, list[dict[str, Any]]]:
    _check_arguments(n_users, n_items, n_events, n_categories, duration_s)
    rng = np.random.default_rng(seed)
    catalog = _build_catalog(rng, n_items, n_categories or _default_categories(n_items), start_ts)
    budgets = _event_budgets(rng, n_users, n_events)
    arrivals = rng.uniform(0.0, 0.9 * duration_s, size=n_users)
    rnd = random.Random(seed)
    rows = _Rows()
    for user_index in np.flatnonzero(budgets):
        user = _new_user(rnd, catalog, int(user_index))
        arrival = float(arrivals[user_index])
        _simulate_user(rnd, catalog, user, int(budgets[user_index]), arrival, duration_s, rows)
    return rows, catalog.records


class _Rows:
    """The simulated events as columns (a tuple per event would cost ~200 bytes; these cost 22)."""

    def __init__(self) -> None:
        self.offset = array("d")  # seconds after the start
        self.user = array("i")
        self.seq = array("i")  # the event's number within its user
        self.item = array("i")
        self.kind = array("b")  # index into _EVENT_TYPES
        self.session = array("i")
        self.device = array("b")  # index into _DEVICES

    def append(self, offset: float, user: int, seq: int, item: int, kind: int, session: int, device: int) -> None:
        self.offset.append(offset)
        self.user.append(user)
        self.seq.append(seq)
        self.item.append(item)
        self.kind.append(kind)
        self.session.append(session)
        self.device.append(device)

    def time_order(self) -> np.ndarray:
        """Positions in time order; a user's events at one instant keep their order, users by index."""
        return np.lexsort((np.frombuffer(self.seq, np.int32), np.frombuffer(self.user, np.int32), self.offset))


def _events(rows: _Rows, records: list[dict[str, Any]], start_ts: float) -> Iterator[Event]:
    """The events in time order, numbered ``e0``, ``e1``, ... in that order."""
    for number, position in enumerate(rows.time_order().tolist()):
        user = rows.user[position]
        yield Event(
            user_id=f"u{user}",
            item_id=records[rows.item[position]]["item_id"],
            event_type=_EVENT_TYPES[rows.kind[position]],
            ts=round(start_ts + rows.offset[position], 3),
            event_id=f"e{number}",
            session_id=f"u{user}-s{rows.session[position]}",
            context={"device": _DEVICES[rows.device[position]]},
        )


_EVENT_TYPES: tuple[EventType, ...] = (EventType.VIEW, EventType.CLICK, EventType.CART, EventType.BUY)


def _check_arguments(n_users: int, n_items: int, n_events: int, n_categories: int | None, duration_s: float) -> None:
    if n_users < 1:
        raise ValueError("n_users must be at least 1")
    if n_items < 2:
        raise ValueError("n_items must be at least 2 (complements need a second item)")
    if n_events < 0:
        raise ValueError("n_events must not be negative")
    if n_categories is not None and not 1 <= n_categories <= n_items:
        raise ValueError("n_categories must be between 1 and n_items")
    if not duration_s > 0:
        raise ValueError("duration_s must be positive")


def _default_categories(n_items: int) -> int:
    """About ``sqrt(n_items) / 2`` categories (16 for 1,000 items), between 2 and 64 and at most half the items."""
    return max(1, min(n_items // 2, max(2, min(64, round(math.sqrt(n_items) / 2)))))


# --- catalog ---------------------------------------------------------------------------------------------------


def _category_names(n_categories: int) -> list[tuple[_Theme, str, str | None]]:
    """(theme, category name, segment word) for each category: themes first, then theme + segment."""
    out: list[tuple[_Theme, str, str | None]] = []
    for index in range(n_categories):
        theme = _THEMES[index % len(_THEMES)]
        variant = index // len(_THEMES)
        if variant == 0:
            out.append((theme, theme.name, None))
            continue
        segment = _SEGMENTS[(variant - 1) % len(_SEGMENTS)]
        round_no = (variant - 1) // len(_SEGMENTS)
        name = f"{theme.name}-{segment.lower()}" + (f"-{round_no + 1}" if round_no else "")
        out.append((theme, name, segment))
    return out


def _brand_names(rng: np.random.Generator, count: int) -> list[str]:
    """Distinct two- or three-syllable brand names."""
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < count:
        parts = rng.choice(len(_SYLLABLES), size=int(rng.integers(2, 4)))
        name = "".join(_SYLLABLES[p] for p in parts).capitalize()
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _build_catalog(rng: np.random.Generator, n_items: int, n_categories: int, start_ts: float) -> _Catalog:
    categories = _category_names(n_categories)
    # Bigger (more popular) categories also hold more items, every category at least one.
    size_weights = 1.0 / np.arange(1, n_categories + 1) ** 0.5
    sizes = 1 + rng.multinomial(n_items - n_categories, size_weights / size_weights.sum())
    item_category = rng.permutation(np.repeat(np.arange(n_categories), sizes))  # ids do not reveal categories
    traffic = 1.0 / np.arange(1, n_categories + 1) ** _CATEGORY_ZIPF
    brands = _brand_names(rng, 4 * n_categories)
    appeal = rng.uniform(0.5, 1.5, size=n_items)

    items_by_category: list[list[int]] = []
    item_cum_by_category: list[list[float]] = []
    for category in range(n_categories):
        members = rng.permutation(np.flatnonzero(item_category == category))  # popularity rank is random
        weights = 1.0 / np.arange(1, len(members) + 1) ** _ITEM_ZIPF
        items_by_category.append(members.tolist())
        item_cum_by_category.append(np.cumsum(weights).tolist())

    records = []
    for item in range(n_items):
        category = int(item_category[item])
        theme, name, segment = categories[category]
        brand = brands[4 * category + int(rng.integers(0, 4))]
        records.append(_item_record(rng, item, theme, name, segment, brand, start_ts))

    partners = _partner_categories(categories)
    categories_of_items = item_category.tolist()
    return _Catalog(
        records=records,
        category_cum=np.cumsum(traffic).tolist(),
        items_by_category=items_by_category,
        item_cum_by_category=item_cum_by_category,
        item_category=categories_of_items,
        item_appeal=appeal.tolist(),
        complements=[
            _complements(rng, items_by_category, categories_of_items[item], partners, item) for item in range(n_items)
        ],
    )


def _item_record(
    rng: np.random.Generator,
    item: int,
    theme: _Theme,
    category: str,
    segment: str | None,
    brand: str,
    start_ts: float,
) -> dict[str, Any]:
    noun = theme.nouns[int(rng.integers(len(theme.nouns)))]
    adjective = theme.adjectives[int(rng.integers(len(theme.adjectives)))]
    generic = _GENERIC_ADJECTIVES[int(rng.integers(len(_GENERIC_ADJECTIVES)))]
    color = _COLORS[int(rng.integers(len(_COLORS)))]
    words = [brand, generic, adjective, *([segment] if segment else []), noun, f"({color})"]
    price = round(theme.base_price * float(rng.lognormal(0.0, 0.5)), 0) - 0.01
    return {
        "item_id": f"i{item}",
        "title": " ".join(words),
        "category": category,
        "price": max(price, 0.99),
        "available": True,
        "ts": start_ts,
        "attributes": [f"category:{category}", f"brand:{brand}", f"color:{color}", f"type:{noun.lower()}"],
    }


def _partner_categories(categories: Sequence[tuple[_Theme, str, str | None]]) -> list[int]:
    """Each category's complement category: the one of its theme's partner theme (same segment if it exists)."""
    by_key = {(theme.name, segment): index for index, (theme, _name, segment) in enumerate(categories)}
    partners = []
    for index, (theme, _name, segment) in enumerate(categories):
        partner = by_key.get((theme.partner, segment), by_key.get((theme.partner, None)))
        partners.append(index if partner is None else partner)
    return partners


def _complements(
    rng: np.random.Generator, items_by_category: list[list[int]], category: int, partners: list[int], item: int
) -> tuple[int, ...]:
    """Up to three complements from the popular quarter of a category: two of the item's own (accessories of
    the same kind), one of the partner category (earbuds for a phone)."""
    picks: list[int] = []
    for source in (category, category, partners[category]):
        members = items_by_category[source]
        head = [m for m in members[: max(8, len(members) // 4)] if m != item and m not in picks]
        if head:
            picks.append(head[int(rng.integers(len(head)))])
    return tuple(picks)


# --- users and events ------------------------------------------------------------------------------------------


def _event_budgets(rng: np.random.Generator, n_users: int, n_events: int) -> np.ndarray:
    """Events per user: one each, the rest spread by a heavy-tailed activity level (a few very active users)."""
    if n_events < n_users:
        budgets = np.zeros(n_users, dtype=np.int64)
        budgets[rng.choice(n_users, size=n_events, replace=False)] = 1
        return budgets
    activity = rng.lognormal(0.0, 1.0, size=n_users)
    return 1 + rng.multinomial(n_events - n_users, activity / activity.sum())


def _pick(rnd: random.Random, cum: list[float]) -> int:
    """Index drawn with probability proportional to the weights whose cumulative sums are ``cum``."""
    return min(bisect.bisect_right(cum, rnd.random() * cum[-1]), len(cum) - 1)


def _new_user(rnd: random.Random, catalog: _Catalog, index: int) -> _User:
    """A taste over 1-5 categories, chosen by category popularity, with Dirichlet(0.8) weights."""
    n_taste = min(len(catalog.category_cum), 1 + min(4, _poisson(rnd, 1.2)))
    chosen: list[int] = []
    while len(chosen) < n_taste:
        category = _pick(rnd, catalog.category_cum)
        if category not in chosen:
            chosen.append(category)
    weights = [rnd.gammavariate(0.8, 1.0) + 1e-9 for _ in chosen]
    return _User(index=index, taste_categories=chosen, taste_weights=weights)


def _poisson(rnd: random.Random, mean: float) -> int:
    """Knuth's method; the means used here are small."""
    limit, k, product = math.exp(-mean), 0, rnd.random()
    while product > limit:
        k += 1
        product *= rnd.random()
    return k


def _drift_taste(rnd: random.Random, catalog: _Catalog, user: _User) -> None:
    """Occasionally shift part of a user's interest to another category: tastes change slowly."""
    if rnd.random() >= _P_TASTE_DRIFT:
        return
    category = _pick(rnd, catalog.category_cum)
    total = sum(user.taste_weights)
    user.taste_weights = [w * (1.0 - _TASTE_DRIFT_WEIGHT) for w in user.taste_weights]
    if category in user.taste_categories:
        user.taste_weights[user.taste_categories.index(category)] += _TASTE_DRIFT_WEIGHT * total
    else:
        user.taste_categories.append(category)
        user.taste_weights.append(_TASTE_DRIFT_WEIGHT * total)


def _taste_category(rnd: random.Random, user: _User) -> int:
    return rnd.choices(user.taste_categories, weights=user.taste_weights)[0]


def _popular_item(rnd: random.Random, catalog: _Catalog, category: int) -> int:
    members = catalog.items_by_category[category]
    return members[_pick(rnd, catalog.item_cum_by_category[category])]


def _complement(rnd: random.Random, catalog: _Catalog, item: int) -> int | None:
    options = catalog.complements[item]
    if not options:
        return None
    return options[_pick(rnd, _COMPLEMENT_CUM[len(options)])]


def _simulate_user(
    rnd: random.Random,
    catalog: _Catalog,
    user: _User,
    budget: int,
    arrival: float,
    duration_s: float,
    rows: _Rows,
) -> None:
    """Append ``budget`` events of one user to ``rows``.

    Session starts are uniform over the time left (a Poisson process), one per session the remaining budget
    needs; when sessions came out shorter than planned the rest is planned again over the time then left, so the
    stream ends close to ``duration_s``. Sessions never overlap; the last one is cut when the budget runs out.
    """
    starts: list[float] = []
    emitted = 0
    session = 0
    previous_end = arrival - 60.0
    last_ts = previous_end
    while emitted < budget:
        if not starts:
            starts = _plan_sessions(rnd, budget - emitted, previous_end + 60.0, duration_s)
        planned = starts.pop()
        device = _pick_device(rnd)
        for ts, item, kind in _session_events(rnd, catalog, user, max(planned, previous_end + 60.0)):
            if emitted == budget:
                break
            last_ts = round(ts, 3)
            rows.append(last_ts, user.index, emitted, item, kind, session, device)
            emitted += 1
        previous_end = last_ts
        session += 1
        _drift_taste(rnd, catalog, user)


def _plan_sessions(rnd: random.Random, events_left: int, earliest: float, duration_s: float) -> list[float]:
    """Start times, latest first, for the sessions that ``events_left`` events need, spread until the end.

    Past the end of the period a user still owes events: those sessions follow at about an hour's spacing.
    """
    count = max(1, math.ceil(events_left / _MEAN_SESSION_EVENTS))
    latest = max(duration_s, earliest + 3_600.0 * count)
    return sorted((rnd.uniform(earliest, latest) for _ in range(count)), reverse=True)


def _pick_device(rnd: random.Random) -> int:
    return rnd.choices(range(len(_DEVICES)), weights=_DEVICE_WEIGHTS)[0]


def _session_events(rnd: random.Random, catalog: _Catalog, user: _User, start: float) -> list[tuple[float, int, int]]:
    """One session as (time offset, item, event type code): views of mostly one category, each with a funnel."""
    first: int | None = None
    if user.last_bought is not None and rnd.random() < _P_FOLLOW_PURCHASE:
        first = _complement(rnd, catalog, user.last_bought)
    user.last_bought = None
    category = catalog.item_category[first] if first is not None else _taste_category(rnd, user)
    n_views = 1 + _geometric(rnd, _MEAN_SESSION_VIEWS - 1.0)

    events: list[tuple[float, int, int]] = []
    clock = start
    previous: int | None = None
    previous_kind = 0
    for position in range(n_views):
        item = first if position == 0 and first is not None else None
        if item is None:
            item = _next_item(rnd, catalog, user, category, previous, previous_kind)
        kind = _funnel(rnd, catalog, user, item)
        for step in range(kind + 1):
            clock += _dwell(rnd, step)
            events.append((clock, item, step))
        if kind == 3:
            user.bought.add(item)
            user.last_bought = item
        previous, previous_kind = item, kind
    return events


def _geometric(rnd: random.Random, mean: float) -> int:
    """Failures before a success for a geometric law with the given mean (0, 1, 2, ...)."""
    if mean <= 0:
        return 0
    p = 1.0 / (1.0 + mean)
    return int(math.log(1.0 - rnd.random()) / math.log(1.0 - p))


def _next_item(
    rnd: random.Random, catalog: _Catalog, user: _User, category: int, previous: int | None, previous_kind: int
) -> int:
    """The next viewed item: a complement of the previous one, an off-category taste pick, or a category pick."""
    if previous is not None:
        p_complement = _P_COMPLEMENT_AFTER_CART if previous_kind >= 2 else _P_COMPLEMENT_AFTER_VIEW
        if rnd.random() < p_complement:
            complement = _complement(rnd, catalog, previous)
            if complement is not None:
                return complement
    if rnd.random() < _P_OFF_CATEGORY:
        category = _taste_category(rnd, user)
    item = _popular_item(rnd, catalog, category)
    if item == previous:  # a reload is not a new view: draw once more
        item = _popular_item(rnd, catalog, category)
    return item


def _funnel(rnd: random.Random, catalog: _Catalog, user: _User, item: int) -> int:
    """How far down view -> click -> cart -> buy this view goes (0-3); owned items are seldom bought again."""
    if rnd.random() >= min(0.9, _P_CLICK * catalog.item_appeal[item]):
        return 0
    if rnd.random() >= _P_CART:
        return 1
    p_buy = _P_REBUY if item in user.bought else _P_BUY
    return 3 if rnd.random() < p_buy else 2


_DWELL_MEAN_S: tuple[float, ...] = (40.0, 15.0, 45.0, 120.0)
"""Mean seconds before a view (browsing to it), a click, a cart and a buy."""


def _dwell(rnd: random.Random, step: int) -> float:
    return 1.0 + rnd.expovariate(1.0 / _DWELL_MEAN_S[step])


# --- files -----------------------------------------------------------------------------------------------------


def write_catalog_jsonl(catalog: Iterable[dict[str, Any]], path: Path) -> int:
    """Write catalog records one JSON object per line; returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("wb") as handle:
        for record in catalog:
            handle.write(orjson.dumps(record))
            handle.write(b"\n")
            count += 1
    return count


def catalog_path_for(events_path: Path) -> Path:
    """The catalog beside an events file: ``shop.jsonl`` -> ``shop.items.jsonl``."""
    return events_path.with_name(f"{events_path.stem}.items.jsonl")


def simulate_to_files(out: Path, n_users: int, n_items: int, n_events: int, seed: int) -> tuple[Path, Path]:
    """Simulate a shop and write its events to ``out`` and its catalog to :func:`catalog_path_for` ``(out)``."""
    out = Path(out)
    rows, catalog = _simulate(n_users, n_items, n_events, seed, DEFAULT_START_TS, None, DEFAULT_DURATION_S)
    write_events_jsonl(_events(rows, catalog, DEFAULT_START_TS), out)
    items_path = catalog_path_for(out)
    write_catalog_jsonl(catalog, items_path)
    return out, items_path
