"""Index kinds and their default parameters, without FAISS: settings and the training configuration import these
before anything decides to load FAISS."""

from __future__ import annotations

from typing import Literal

IndexKind = Literal["hnsw", "flat", "ivf", "ivfpq"]
IndexKindOrAuto = Literal["auto", "hnsw", "flat", "ivf", "ivfpq"]
INDEX_KINDS: tuple[str, ...] = ("hnsw", "flat", "ivf", "ivfpq")

AUTO_FLAT_MAX_ITEMS = 5_000
"""Catalogues smaller than this get an exact ``flat`` index under ``kind="auto"`` (see the item index's docstring)."""
AUTO_HNSW_MAX_ITEMS = 100_000
"""Catalogues from :data:`AUTO_FLAT_MAX_ITEMS` up to this get HNSW under ``kind="auto"``, larger ones ``ivfpq``."""

DEFAULT_EF_SEARCH = 128
DEFAULT_NPROBE = 16  # IVF cells probed by the ``ivf`` kind when none is set
IVFPQ_PROBE_SHARE = 0.625
"""Share of its cells an ``ivfpq`` index probes when no nprobe is set: trained item tables spread a query's best
items over many cells, and the 4-bit codes make scanning most of them cheap."""
DEFAULT_RERANK_FACTOR = 4
"""``ivfpq`` re-scores this many times ``k`` of its best code matches with the exact vectors."""
DEFAULT_N_CANDIDATES = 200  # candidates retrieved per query and re-scored by the ranker
