"""Index kinds and their default parameters, without FAISS: settings and the training configuration import these
before anything decides to load FAISS."""

from __future__ import annotations

from typing import Literal

IndexKind = Literal["hnsw", "flat", "ivf"]
IndexKindOrAuto = Literal["auto", "hnsw", "flat", "ivf"]
INDEX_KINDS: tuple[str, ...] = ("hnsw", "flat", "ivf")

AUTO_FLAT_MAX_ITEMS = 5_000
"""Catalogues smaller than this get an exact ``flat`` index under ``kind="auto"`` (see module docstring)."""

DEFAULT_EF_SEARCH = 128
DEFAULT_NPROBE = 16
DEFAULT_N_CANDIDATES = 200  # candidates retrieved per query and re-scored by the ranker
