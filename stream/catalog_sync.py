"""Catalog sync: the live catalog reaching the served models between batches.

Records from the catalog topic change availability at once; an item the model was not trained on is embedded from
its title, category and attributes (the artifact's text encoder and content projection) and added to the item
table, so it can be retrieved and recommended before any retraining. Text embeddings are cached per item and
content, and survive a model swap while the encoder stays the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from streamrec.stream.catalog import Catalog, CatalogChange, CatalogItem
from streamrec.stream.item_table import NO_CLUSTER, ItemTable
from streamrec.stream.metrics import WorkerMetrics

if TYPE_CHECKING:
    from streamrec.model.artifacts import ModelArtifacts
    from streamrec.model.content import TextEncoder

#: Text embeddings by encoder name, then item id: what :meth:`CatalogSync.text_vectors` hands to ``apply``.
TextVectors = dict[str, dict[str, np.ndarray]]


class CatalogSync:
    """The catalog held from the stream, and what the served models' item tables need from it.

    Several models may be served at once (A/B variants); each catalog record is applied to the catalog once and
    indexed into every model's table.
    """

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.catalog = Catalog()  # outlives model swaps: it comes from the stream
        self.metrics = metrics
        # encoder name -> item -> (content, text vector): survives a swap while the encoder stays in use
        self._text_vectors: dict[str, dict[str, tuple[tuple, np.ndarray]]] = {}
        self._encoders: dict[str, TextEncoder] = {}
        self._models: list[tuple[ModelArtifacts, ItemTable]] = []

    def use_models(self, models: Sequence[tuple[ModelArtifacts, ItemTable]]) -> None:
        """Index into these tables (the first is the primary: its clusters stand in for missing categories) from
        now on; the caller replays the catalog into any new one with :meth:`replay`."""
        from streamrec.model.content import load_encoder

        self._models = list(models)
        names = {artifacts.content.encoder_name for artifacts, _ in self._models if artifacts.content is not None}
        self._encoders = {name: self._encoders.get(name) or load_encoder(name) for name in names}
        self._text_vectors = {name: self._text_vectors.get(name, {}) for name in names}

    @property
    def items(self) -> ItemTable:
        """The primary model's item table."""
        assert self._models, "use_models() first"
        return self._models[0][1]

    def text_vectors(self, items: Sequence[CatalogItem]) -> TextVectors:
        """Text embeddings of the items that :meth:`apply` will need to index from their content.

        The slow part of a catalog update, so runtimes call it outside the batch lock (it touches no state the
        hot path reads). Items every model was trained on, and items whose content is unchanged since they were
        last embedded, need none.
        """
        from streamrec.model.content import item_text

        vectors: TextVectors = {}
        for name, encoder in self._encoders.items():
            tables = [table for artifacts, table in self._models if artifacts.content is not None
                      and artifacts.content.encoder_name == name]  # fmt: skip
            wanted = {
                item.item_id: item
                for item in items
                if not all(table.is_trained(item.item_id) for table in tables) and not self._cached(name, item)
            }
            if wanted:
                encoded = encoder.encode([item_text(item.content()) for item in wanted.values()])
                vectors[name] = dict(zip(wanted, encoded, strict=True))
        return vectors

    def _cached(self, encoder_name: str, item: CatalogItem) -> bool:
        held = self._text_vectors.get(encoder_name, {}).get(item.item_id)
        return held is not None and held[0] == _content_key(item)

    def apply(self, items: Sequence[CatalogItem], text_vectors: TextVectors) -> tuple[dict[str, int], bool]:
        """Apply catalog records (oldest first): availability at once, new items indexed from their content.

        ``text_vectors`` comes from :meth:`text_vectors`; an item missing from it is embedded here. Returns the
        count of each kind of change, and whether an item table grew (the caller's embeddings views must follow).
        """
        counts: dict[str, int] = {}
        grown = False
        for item in items:
            change = self.catalog.upsert(item)
            counts[change.value] = counts.get(change.value, 0) + 1
            if change is CatalogChange.STALE:
                continue
            for artifacts, table in self._models:
                grown = self._index(item, change, artifacts, table, text_vectors) or grown
        for change, count in counts.items():
            self.metrics.catalog_updates.labels(change).inc(count)
        self.metrics.catalog_items.set(len(self.catalog))
        return counts, grown

    def replay(self, artifacts: ModelArtifacts, table: ItemTable) -> bool:
        """Index the held catalog into a newly loaded model's table; whether it grew."""
        held = list(self.catalog)
        vectors = self.text_vectors(held)
        grown = False
        for item in held:
            grown = self._index(item, CatalogChange.NEW, artifacts, table, vectors) or grown
        return grown

    def _index(
        self,
        item: CatalogItem,
        change: CatalogChange,
        artifacts: ModelArtifacts,
        table: ItemTable,
        text_vectors: TextVectors,
    ) -> bool:
        """Make ``table`` serve ``item`` as it now is; whether the table grew."""
        projection = artifacts.content
        grown = False
        if (
            change in (CatalogChange.NEW, CatalogChange.CONTENT)
            and projection is not None
            and not table.is_trained(item.item_id)
        ):
            name = projection.encoder_name
            cache = self._text_vectors.setdefault(name, {})
            vector = text_vectors.get(name, {}).get(item.item_id)
            if vector is None and not self._cached(name, item):
                vector = self.text_vectors([item]).get(name, {}).get(item.item_id)
            if vector is not None:
                cache[item.item_id] = (_content_key(item), vector)
            cached = cache.get(item.item_id)
            if cached is not None and (change is CatalogChange.CONTENT or item.item_id not in table.row_of):
                projected = projection.served_rows(cached[1][None, :], [item.content()])[0]
                grown = table.add(item.item_id, projected) is not None
        table.set_available(item.item_id, item.available)
        return grown

    def remove(self, item_id: str) -> bool:
        """A tombstone on the catalog topic: the item is never recommended again. Whether it was held."""
        if self.catalog.remove(item_id) is not CatalogChange.REMOVED:
            return False
        for _, table in self._models:
            table.set_available(item_id, False)
        self.metrics.catalog_updates.labels(CatalogChange.REMOVED.value).inc()
        return True

    def category_of(self, item_id: str, table: ItemTable | None = None) -> str | None:
        """The catalog's category, else the item's cluster in ``table`` (default: the primary model's), a
        stand-in when the catalog has no categories."""
        category = self.catalog.category_of(item_id)
        if category is not None:
            return category
        table = self.items if table is None else table
        row = table.row_of.get(item_id)
        if row is None:
            return None
        cluster = table.cluster_of(row)
        return None if cluster == NO_CLUSTER else f"cluster-{cluster}"


def _content_key(item: CatalogItem) -> tuple:
    return (item.title, item.category, item.attributes)
