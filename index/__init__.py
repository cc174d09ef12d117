"""Approximate nearest-neighbour retrieval over the model's item embeddings (FAISS is imported only by
:mod:`streamrec.index.item_index`)."""
