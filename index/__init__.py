"""Approximate nearest-neighbour retrieval over the model's item embeddings."""

from streamrec.index.item_index import ItemIndex, exact_recall

__all__ = ["ItemIndex", "exact_recall"]
