"""A/B variants: which variant serves a user.

A user's variant follows from a keyed hash of their id alone, so every worker, every restart and every replay
agrees without sharing any table, and a user keeps their variant for as long as the variants and the salt stay the
same. Changing ``variant_salt`` draws a fresh, independent split for the next experiment.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from itertools import accumulate
from pathlib import Path

from streamrec.stream.settings import Settings, Variant

DEFAULT_VARIANT = "default"
_HASH_SPAN = float(1 << 64)


def variants_of(settings: Settings) -> list[Variant]:
    """The configured variants, or the one ``default`` variant serving the worker's model and settings."""
    return list(settings.variants) or [Variant(name=DEFAULT_VARIANT, share=1.0)]


def own_model_dir(settings: Settings, variant: Variant) -> Path | None:
    """The model directory ``variant`` serves apart from the worker's, resolved; None when it serves the worker's
    own (no ``artifacts_dir``, or the worker's ``artifacts_dir`` under another spelling), so that one directory is
    loaded, watched and swapped once."""
    if variant.artifacts_dir is None:
        return None
    own = Path(variant.artifacts_dir).resolve()
    worker = None if settings.artifacts_dir is None else Path(settings.artifacts_dir).resolve()
    return None if own == worker else own


def hash_fraction(salt: str, user_id: str) -> float:
    """A uniform number in [0, 1) fixed by ``salt`` and ``user_id``."""
    digest = hashlib.blake2b(user_id.encode(), digest_size=8, key=salt.encode()[:64]).digest()
    return int.from_bytes(digest, "big") / _HASH_SPAN


class VariantAssigner:
    """Assigns users to variants in proportion to their shares."""

    def __init__(self, variants: Sequence[Variant], salt: str) -> None:
        if not variants:
            raise ValueError("at least one variant is needed")
        self.names = [variant.name for variant in variants]
        total = sum(variant.share for variant in variants)
        self._bounds = [bound / total for bound in accumulate(variant.share for variant in variants)][:-1]
        self._salt = salt
        self._single = self.names[0] if len(self.names) == 1 else None

    def assign(self, user_id: str) -> str:
        if self._single is not None:  # one variant: no hash on the hot path
            return self._single
        return self.names[bisect.bisect_right(self._bounds, hash_fraction(self._salt, user_id))]
