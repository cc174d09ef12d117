"""Catalog sync: the live catalog reaching the served model between batches.

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

MIN_CONTENT_CONFIDENCE = 0.05


class CatalogSync:
    """The catalog held from the stream, and what the served model's item table needs from it."""

    def __init__(self, metrics: WorkerMetrics) -> None:
        self.catalog = Catalog()  # outlives model swaps: it comes from the stream
        self.metrics = metrics
        self._text_vectors: dict[str, tuple[tuple, np.ndarray]] = {}  # item -> (content, text vector)
        self._encoder: TextEncoder | None = None
        self._artifacts: ModelArtifacts | None = None
        self._items: ItemTable | None = None

    def use_model(self, artifacts: ModelArtifacts, items: ItemTable) -> None:
        """Embed into ``items``, the table of ``artifacts``, from now on (the caller replays the catalog)."""
        self._artifacts, self._items = artifacts, items
        self._encoder = self._content_encoder(artifacts)

    def _content_encoder(self, artifacts: ModelArtifacts) -> TextEncoder | None:
        if artifacts.content is None:
            return None
        from streamrec.model.content import load_encoder

        if self._encoder is not None and self._encoder.name == artifacts.content.encoder_name:
            return self._encoder
        self._text_vectors.clear()
        return load_encoder(artifacts.content.encoder_name)

    @property
    def items(self) -> ItemTable:
        assert self._items is not None, "use_model() first"
        return self._items

    def text_vectors(self, items: Sequence[CatalogItem]) -> dict[str, np.ndarray]:
        """Text embeddings of the items that :meth:`apply` will need to index from their content.

        The slow part of a catalog update, so runtimes call it outside the batch lock (it touches no state the
        hot path reads). Items the model was trained on, and items whose content is unchanged since they were
        last embedded, need none.
        """
        from streamrec.model.content import item_text

        encoder = self._encoder
        if encoder is None:
            return {}
        wanted = {
            item.item_id: item for item in items if not self.items.is_trained(item.item_id) and not self._cached(item)
        }
        if not wanted:
            return {}
        vectors = encoder.encode([item_text(item.content()) for item in wanted.values()])
        return dict(zip(wanted, vectors, strict=True))

    def _cached(self, item: CatalogItem) -> bool:
        held = self._text_vectors.get(item.item_id)
        return held is not None and held[0] == _content_key(item)

    def apply(
        self, items: Sequence[CatalogItem], text_vectors: dict[str, np.ndarray], *, replay: bool = False
    ) -> tuple[dict[str, int], bool]:
        """Apply catalog records (oldest first): availability at once, new items indexed from their content.

        ``text_vectors`` comes from :meth:`text_vectors`; an item missing from it is embedded here. ``replay``
        re-indexes the held catalog into a newly loaded model. Returns the count of each kind of change, and
        whether the item table grew (the caller's embeddings views must follow).
        """
        assert self._artifacts is not None, "use_model() first"
        counts: dict[str, int] = {}
        projection = self._artifacts.content
        grown = False
        for item in items:
            change = CatalogChange.NEW if replay else self.catalog.upsert(item)
            counts[change.value] = counts.get(change.value, 0) + 1
            if change is CatalogChange.STALE:
                continue
            if (
                change in (CatalogChange.NEW, CatalogChange.CONTENT)
                and projection is not None
                and not self.items.is_trained(item.item_id)
            ):
                vector = text_vectors.get(item.item_id)
                if vector is None and not self._cached(item):
                    vector = self.text_vectors([item]).get(item.item_id)
                if vector is not None:
                    self._text_vectors[item.item_id] = (_content_key(item), vector)
                cached = self._text_vectors.get(item.item_id)
                if cached is not None and (change is CatalogChange.CONTENT or item.item_id not in self.items.row_of):
                    vector = projection.project(cached[1][None, :])[0] * self._content_confidence
                    row = self.items.add(item.item_id, vector)
                    grown = grown or row is not None
            self.items.set_available(item.item_id, item.available)
        for change, count in counts.items():
            self.metrics.catalog_updates.labels(change).inc(count)
        self.metrics.catalog_items.set(len(self.catalog))
        return counts, grown

    @property
    def _content_confidence(self) -> np.float32:
        """How far to trust a content embedding: the projection's held-out cosine to the learned embeddings.

        The expected inner product of a projected vector with the true embedding shrinks with that cosine, so a
        text that predicts little (say a bare category id) gives a short vector: such items rank below established
        ones on inner product and reach shoppers through exploration instead of flooding every list.
        """
        assert self._artifacts is not None
        projection = self._artifacts.content
        cosine = None if projection is None else projection.quality.get("holdout_cosine")
        return np.float32(1.0 if cosine is None else min(1.0, max(MIN_CONTENT_CONFIDENCE, cosine)))

    def remove(self, item_id: str) -> bool:
        """A tombstone on the catalog topic: the item is never recommended again. Whether it was held."""
        if self.catalog.remove(item_id) is not CatalogChange.REMOVED:
            return False
        self.items.set_available(item_id, False)
        self.metrics.catalog_updates.labels(CatalogChange.REMOVED.value).inc()
        return True

    def category_of(self, item_id: str) -> str | None:
        """The catalog's category, else the item's cluster (a stand-in when the catalog has no categories)."""
        category = self.catalog.category_of(item_id)
        if category is not None:
            return category
        row = self.items.row_of.get(item_id)
        if row is None:
            return None
        cluster = self.items.cluster_of(row)
        return None if cluster == NO_CLUSTER else f"cluster-{cluster}"


def _content_key(item: CatalogItem) -> tuple:
    return (item.title, item.category, item.attributes)
