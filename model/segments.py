"""User segments and item clusters: spherical k-means over the model's inner-product space, with FAISS.

A user's interest vector (float32 ``[n_users, d]``, in the same inner-product space as the item table) is only as
good as the events behind it, and a user with one or two events has a weak one. Clustering users into a bounded
number of segments lets the stream keep a trending list per segment, which is cheap (a few dozen counters rather
than one per user) and gives such a user what is rising among similar users instead of what is rising everywhere.

Item embeddings are clustered the same way. The clusters stand in for categories when a catalogue has none, so
the filters and diversity rules that want a category still have one.

Both clusterings are *spherical*: vectors are L2-normalised before k-means and centroids are unit vectors, so
assignment is by cosine. The direction of an interest vector says what a user likes; its norm mostly says how
much history the user has, which must not decide the segment. Rows that are zero or non-finite carry no
direction and are left out of training; at assignment time they go to cluster 0, deterministically.

Persistence is safetensors (no pickles), and :meth:`Segments.load` validates everything it reads so that a
corrupt or mismatched file is refused rather than served.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy

from streamrec.index.item_index import as_float32_matrix

UNIT_NORM_TOLERANCE = 1e-3
"""How far from 1 a stored centroid's norm may be; anything further means the file is not what fit wrote."""

_KEYS = ("user_centroids", "item_centroids", "item_cluster")


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value, so generated __eq__ would fail
class Segments:
    """Unit-norm user and item centroids, plus the cluster of every item row.

    ``user_centroids`` float32 ``[S, d]``, ``item_centroids`` float32 ``[C, d]``, ``item_cluster`` int32
    ``[n_items]`` with values in ``0..C-1``. Construction checks that these agree with each other.
    """

    user_centroids: np.ndarray
    item_centroids: np.ndarray
    item_cluster: np.ndarray

    def __post_init__(self) -> None:
        _check_centroids("user_centroids", self.user_centroids, None)
        _check_centroids("item_centroids", self.item_centroids, self.user_centroids.shape[1])
        _check_clusters(self.item_cluster, None, self.n_item_clusters)

    # --- assignment ------------------------------------------------------------------------------------
    def assign_users(self, vectors: np.ndarray) -> np.ndarray:
        """The segment (int64 ``[B]``) of each user vector ``[B, d]``: the centroid of highest cosine."""
        return _nearest(self.user_centroids, vectors)

    def assign_items(self, vectors: np.ndarray) -> np.ndarray:
        """The cluster (int64 ``[B]``) of each item embedding ``[B, d]``, e.g. for items added after fitting."""
        return _nearest(self.item_centroids, vectors)

    # --- introspection ---------------------------------------------------------------------------------
    @property
    def n_segments(self) -> int:
        return int(self.user_centroids.shape[0])

    @property
    def n_item_clusters(self) -> int:
        return int(self.item_centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.user_centroids.shape[1])

    # --- persistence -----------------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        """Write the three arrays as safetensors (numpy), a format that cannot execute code on load."""
        save_numpy({key: np.ascontiguousarray(getattr(self, key)) for key in _KEYS}, str(path))

    @classmethod
    def load(cls, path: Path, n_items: int, dim: int) -> Segments:
        """Read segments written by :meth:`save` for a model with ``n_items`` item rows of dimension ``dim``.

        Raises FileNotFoundError if there is no file and ValueError if it is unreadable or does not match: a
        segment file from another model version would silently mis-assign every user.
        """
        if not Path(path).is_file():
            raise FileNotFoundError(f"no segments file at {path}")
        try:
            tensors = load_numpy(str(path))
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"cannot read segments from {path}: {exc}") from exc
        missing = [key for key in _KEYS if key not in tensors]
        if missing:
            raise ValueError(f"{path}: missing {', '.join(missing)}")
        try:
            _check_centroids("user_centroids", tensors["user_centroids"], dim)
            _check_centroids("item_centroids", tensors["item_centroids"], dim)
            _check_clusters(tensors["item_cluster"], n_items, int(tensors["item_centroids"].shape[0]))
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from exc
        return cls(tensors["user_centroids"], tensors["item_centroids"], tensors["item_cluster"])


def fit_segments(
    user_vectors: np.ndarray,
    item_embeddings: np.ndarray,
    n_segments: int,
    n_item_clusters: int,
    seed: int = 0,
    niter: int = 20,
    nredo: int = 5,
) -> Segments:
    """Cluster users into at most ``n_segments`` segments and items into at most ``n_item_clusters`` clusters.

    Each k is capped at the number of distinct usable (non-zero, finite) vectors, since k-means cannot place
    more distinct centroids than that; ``item_cluster`` assigns every item row, unusable ones to cluster 0.
    ``nredo`` restarts keep the best objective: a single run from random seeds often merges two well-separated
    groups and splits a third, and restarts on a bounded k are cheap.
    """
    users = as_float32_matrix(user_vectors, None, "user_vectors")
    items = as_float32_matrix(item_embeddings, users.shape[1], "item_embeddings")
    if n_segments < 1 or n_item_clusters < 1:
        raise ValueError("n_segments and n_item_clusters must be at least 1")
    if niter < 1 or nredo < 1:
        raise ValueError("niter and nredo must be at least 1")
    user_centroids = _spherical_kmeans(users, n_segments, seed, niter, nredo, "user_vectors")
    item_centroids = _spherical_kmeans(items, n_item_clusters, seed, niter, nredo, "item_embeddings")
    item_cluster = _nearest(item_centroids, items).astype(np.int32)
    return Segments(user_centroids, item_centroids, item_cluster)


# --- helpers -------------------------------------------------------------------------------------------
def _normalise(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit rows and the mask of usable rows; zero and non-finite rows become all-zero (no direction)."""
    finite = np.isfinite(matrix).all(axis=1)
    safe = np.where(finite[:, None], matrix, np.float32(0.0))
    norms = np.linalg.norm(safe, axis=1)
    usable = finite & (norms > 0) & np.isfinite(norms)  # a norm can overflow float32 even when entries do not
    unit = np.zeros_like(safe)
    unit[usable] = safe[usable] / norms[usable, None]
    return unit, usable


def _spherical_kmeans(matrix: np.ndarray, k: int, seed: int, niter: int, nredo: int, name: str) -> np.ndarray:
    """Unit centroids (float32 ``[k', d]``, ``k' = min(k, distinct usable rows)``) of the rows of ``matrix``.

    Training runs on the distinct unit vectors weighted by how often each occurs, which is the same objective
    as on all rows but guarantees k-means never starts from two identical centroids.
    """
    unit, usable = _normalise(matrix)
    if not usable.any():
        raise ValueError(f"{name}: no non-zero finite vectors to cluster")
    points, counts = np.unique(unit[usable], axis=0, return_counts=True)
    k = max(1, min(k, len(points)))
    kmeans = faiss.Kmeans(
        points.shape[1],
        k,
        niter=niter,
        nredo=nredo,
        seed=seed,
        spherical=True,
        verbose=False,
        min_points_per_centroid=1,  # small inputs are expected here; FAISS would print a warning to stderr
    )
    kmeans.train(np.ascontiguousarray(points, dtype=np.float32), weights=counts.astype(np.float32))
    centroids, _ = _normalise(np.asarray(kmeans.centroids, dtype=np.float32))
    return centroids


def _nearest(centroids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Index (int64 ``[B]``) of the centroid with the highest cosine to each row; zero rows get 0.

    A zero row scores 0 against every centroid and ``argmax`` takes the first, so the fallback is deterministic.
    A matrix product is enough: the number of centroids is small and bounded.
    """
    unit, _ = _normalise(as_float32_matrix(vectors, centroids.shape[1], "vectors"))
    if len(unit) == 0:
        return np.empty(0, dtype=np.int64)
    return np.argmax(unit @ centroids.T, axis=1).astype(np.int64)


def _check_centroids(name: str, centroids: np.ndarray, dim: int | None) -> None:
    """Refuse centroids that are not finite, unit-norm float32 ``[k >= 1, dim]``."""
    if centroids.dtype != np.float32 or centroids.ndim != 2 or centroids.shape[0] < 1:
        raise ValueError(f"{name} of shape {centroids.shape} ({centroids.dtype}), expected float32 [k >= 1, d]")
    if dim is not None and centroids.shape[1] != dim:
        raise ValueError(f"{name} of dimension {centroids.shape[1]}, expected {dim}")
    if not np.isfinite(centroids).all():
        raise ValueError(f"{name} contain non-finite values")
    if np.abs(np.linalg.norm(centroids, axis=1) - 1.0).max() > UNIT_NORM_TOLERANCE:
        raise ValueError(f"{name} are not unit vectors")


def _check_clusters(item_cluster: np.ndarray, n_items: int | None, n_clusters: int) -> None:
    """Refuse an item-cluster vector that is not int32 ``[n_items]`` with values in ``0..n_clusters-1``."""
    if item_cluster.dtype != np.int32 or item_cluster.ndim != 1:
        raise ValueError(f"item_cluster of shape {item_cluster.shape} ({item_cluster.dtype}), expected int32 [n]")
    if n_items is not None and len(item_cluster) != n_items:
        raise ValueError(f"item_cluster covers {len(item_cluster)} items, expected {n_items}")
    if len(item_cluster) and (int(item_cluster.min()) < 0 or int(item_cluster.max()) >= n_clusters):
        raise ValueError(f"item_cluster has ids outside 0..{n_clusters - 1}")
