"""Model artifacts: the versioned directory ``model/train.py`` writes and the worker serves from.

Layout of ``<root>/<version>/`` (a version is never modified once written; a new training writes a new one):

* ``model.safetensors`` — ranker weights (the item table ``E`` included);
* ``item_ids.json`` — the item id of every row of ``E``;
* ``index.faiss`` — the ANN index over ``E``;
* ``training_curve.png`` — loss and validation NDCG per epoch;
* ``item_knn.safetensors`` (optional) — the item-kNN whose score the worker blends into the ranker's,
  ``ranker + blend_weight · item_knn`` (manifest keys ``item_knn`` and ``blend_weight``; absent: ranker only);
* ``segments.safetensors`` (optional) — K-means centroids of user interest vectors (segments) and of item
  embeddings, with every item's cluster (``model/segments.py``; manifest key ``segments``);
* ``content_projection.safetensors`` (optional) — the map from a catalog item's text embedding into ``E``, for items
  added after training (``model/content.py``; manifest key ``content``: the text encoder and the fit's quality);
* ``shopper_projection.safetensors`` (optional) — the map from a new item's shoppers' ranker states into ``E``, with
  which a worker moves a live item's row as its events arrive (``model/shoppers.py``; manifest key ``shoppers``);
* ``student.safetensors`` (optional) — a smaller ranker distilled from this one (``streamrec distill``,
  ``model/compress.py``), served with ``ranker_compression=distilled``. It holds the student's encoder only: its
  item table is the teacher's ``E``, shared, so retrieval, the index and live items stay valid (manifest key
  ``student``: its ``ranker_config``, the distillation settings and validation figures);
* ``manifest.json`` — shapes, configuration, offline metrics and the SHA-256 of every other file.

``<root>/LATEST`` holds the name of the version to serve. Loading verifies everything it can before a worker
swaps a model in: a half-copied or hand-edited directory is refused with :class:`ArtifactError`, never served.
Only safetensors, JSON and FAISS's own format are read — no pickles.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy
from safetensors.torch import load_file

from streamrec.index.item_index import ItemIndex
from streamrec.model.baselines import ItemKNNModel
from streamrec.model.content import ContentProjection
from streamrec.model.ranker import RankerConfig, SequenceRanker
from streamrec.model.segments import Segments
from streamrec.model.shoppers import ShopperProjection

T = TypeVar("T")

FORMAT_VERSION = 1
"""Version of this layout; bumped on any incompatible change so old workers refuse new artifacts."""

MODEL_FILE = "model.safetensors"
ITEM_IDS_FILE = "item_ids.json"
INDEX_FILE = "index.faiss"
CURVE_FILE = "training_curve.png"
ITEM_KNN_FILE = "item_knn.safetensors"
SEGMENTS_FILE = "segments.safetensors"
CONTENT_FILE = "content_projection.safetensors"
STUDENT_FILE = "student.safetensors"
SHOPPERS_FILE = "shopper_projection.safetensors"
ITEM_TABLE_KEY = "item_embedding.weight"
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "LATEST"
REQUIRED_FILES = (MODEL_FILE, ITEM_IDS_FILE, INDEX_FILE)


class ArtifactError(ValueError):
    """An artifact directory that is missing, incomplete, corrupt or inconsistent."""


@dataclass(frozen=True)
class ModelArtifacts:
    """Everything the worker needs from one trained model version, loaded and verified."""

    directory: Path
    manifest: dict[str, Any]
    item_ids: list[str]
    row_of: dict[str, int]
    item_embeddings: np.ndarray  # float32 [n_items, dim], C-contiguous: the table E of retrieval
    ranker: SequenceRanker  # eval mode, gradients off
    index: ItemIndex
    item_knn: ItemKNNModel | None = None  # blended into the ranker's scores when blend_weight > 0
    blend_weight: float = 0.0
    segments: Segments | None = None  # user segments and item clusters; None for versions written without
    content: ContentProjection | None = None  # text → E for new items; None when trained without a catalog
    student: SequenceRanker | None = None  # distilled ranker sharing ``ranker``'s item table; None if not distilled
    shoppers: ShopperProjection | None = None  # shopper states → E for live items; None for versions written without

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def dim(self) -> int:
        return int(self.item_embeddings.shape[1])


def resolve_artifact_dir(path: Path) -> Path:
    """The version directory ``path`` designates: itself if it holds a manifest, else the one its ``LATEST``
    names."""
    path = Path(path)
    if (path / MANIFEST_FILE).is_file():
        return path
    latest = path / LATEST_FILE
    if not latest.is_file():
        raise ArtifactError(
            f"{path} is neither a model version directory (no {MANIFEST_FILE}) nor an artifact root "
            f"(no {LATEST_FILE}); train a model first"
        )
    name = latest.read_text(encoding="utf-8").strip()
    if not name or name in {".", ".."} or "/" in name or "\\" in name:
        raise ArtifactError(f"{latest} does not name a version directory: {name!r}")
    version_dir = path / name
    if not version_dir.is_dir():
        raise ArtifactError(f"{latest} names {name!r}, but {version_dir} does not exist")
    return version_dir


def load_artifacts(path: Path) -> ModelArtifacts:
    """Load and verify the version at ``path`` (a version directory or a root with ``LATEST``).

    Raises :class:`ArtifactError` when a file is missing or fails its checksum, the format version is not
    :data:`FORMAT_VERSION`, or shapes disagree between manifest, item ids, weights and index.
    """
    directory = resolve_artifact_dir(path)
    manifest = _read_manifest(directory)
    _verify_files(directory, manifest)
    n_items, dim = _int_field(manifest, "n_items"), _int_field(manifest, "dim")

    item_ids = _read_item_ids(directory / ITEM_IDS_FILE)
    if len(item_ids) != n_items:
        raise ArtifactError(f"{ITEM_IDS_FILE} lists {len(item_ids)} items, the manifest says n_items={n_items}")
    ranker = _load_ranker(directory / MODEL_FILE, manifest, n_items, dim)
    embeddings = np.ascontiguousarray(ranker.item_embeddings().detach().numpy(), dtype=np.float32).copy()

    try:
        index = ItemIndex.load(directory / INDEX_FILE)
    except (RuntimeError, ValueError) as exc:  # FAISS reports unreadable files as RuntimeError
        raise ArtifactError(f"cannot read {directory / INDEX_FILE}: {exc}") from exc
    if len(index) != n_items or index.dim != dim:
        raise ArtifactError(
            f"{INDEX_FILE} holds {len(index)} vectors of dimension {index.dim}, expected {n_items} x {dim}"
        )
    expected_kind = manifest.get("index", {}).get("kind")
    if expected_kind is not None and expected_kind != index.kind:
        raise ArtifactError(f"{INDEX_FILE} is a {index.kind} index, the manifest says {expected_kind}")

    item_knn, blend_weight = _load_item_knn(directory, manifest, n_items)
    segments = _load_optional(directory, manifest, SEGMENTS_FILE, lambda path: Segments.load(path, n_items, dim))
    content = _load_optional(directory, manifest, CONTENT_FILE, ContentProjection.load)
    if content is not None and content.dim != dim:
        raise ArtifactError(f"{CONTENT_FILE} projects to dimension {content.dim}, the model's is {dim}")
    student = _load_student(directory, manifest, ranker)
    shoppers = _load_optional(directory, manifest, SHOPPERS_FILE, ShopperProjection.load)
    if shoppers is not None and shoppers.dim != dim:
        raise ArtifactError(f"{SHOPPERS_FILE} maps to dimension {shoppers.dim}, the model's is {dim}")
    return ModelArtifacts(
        directory=directory,
        manifest=manifest,
        item_ids=item_ids,
        row_of={item: row for row, item in enumerate(item_ids)},
        item_embeddings=embeddings,
        ranker=ranker,
        index=index,
        item_knn=item_knn,
        blend_weight=blend_weight,
        segments=segments,
        content=content,
        student=student,
        shoppers=shoppers,
    )


def _load_optional(directory: Path, manifest: dict[str, Any], name: str, load: Callable[[Path], T]) -> T | None:
    """An optional file: absent from the manifest means the version was written without it."""
    if name not in manifest["files"]:
        return None
    try:
        return load(directory / name)
    except (ValueError, OSError, SafetensorError) as exc:
        raise ArtifactError(f"cannot read {directory / name}: {exc}") from exc


def save_item_knn(model: ItemKNNModel, path: Path) -> None:
    """Write the item-kNN's CSR similarity as safetensors (numpy): indptr int64, indices int32, similarity f32."""
    save_numpy(
        {
            "indptr": np.ascontiguousarray(model.indptr, dtype=np.int64),
            "indices": np.ascontiguousarray(model.neighbors, dtype=np.int32),
            "similarity": np.ascontiguousarray(model.similarities, dtype=np.float32),
        },
        str(path),
    )


def _load_item_knn(directory: Path, manifest: dict[str, Any], n_items: int) -> tuple[ItemKNNModel | None, float]:
    """The optional blended item-kNN and its weight; ``(None, 0.0)`` for versions written without one."""
    blend_weight = manifest.get("blend_weight", 0.0)
    if not isinstance(blend_weight, int | float) or isinstance(blend_weight, bool) or not 0 <= blend_weight < math.inf:
        raise ArtifactError(f"{MANIFEST_FILE}: blend_weight must be a non-negative number, got {blend_weight!r}")
    path = directory / ITEM_KNN_FILE
    if not path.is_file():
        if ITEM_KNN_FILE in manifest["files"] or blend_weight > 0:
            raise ArtifactError(f"missing {path}")
        return None, 0.0
    if ITEM_KNN_FILE not in manifest["files"]:
        raise ArtifactError(f"{MANIFEST_FILE} does not list {ITEM_KNN_FILE}")
    params = manifest.get("item_knn", {})
    try:
        tensors = load_numpy(str(path))
        indptr, indices, similarity = tensors["indptr"], tensors["indices"], tensors["similarity"]
    except (SafetensorError, OSError, KeyError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc
    if indptr.shape != (n_items + 1,) or indptr.dtype != np.int64:
        raise ArtifactError(f"{path}: indptr of shape {indptr.shape} ({indptr.dtype}), expected int64 [{n_items + 1}]")
    nnz = int(indptr[-1])
    if (
        indptr[0] != 0
        or np.any(np.diff(indptr) < 0)
        or indices.shape != (nnz,)
        or similarity.shape != (nnz,)
        or (nnz and (indices.min() < 0 or indices.max() >= n_items))
        or not np.all(np.isfinite(similarity))
    ):
        raise ArtifactError(f"{path} is not a valid CSR similarity over {n_items} items")
    try:
        model = ItemKNNModel(
            indptr,
            indices.astype(np.int32, copy=False),
            similarity.astype(np.float32, copy=False),
            n_recent=int(params.get("n_recent", 3)),
            decay=float(params.get("decay", 0.6)),
        )
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{MANIFEST_FILE}: invalid item_knn parameters: {exc}") from exc
    return model, float(blend_weight)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_latest(root: Path, version: str) -> None:
    """Point ``root/LATEST`` at ``version`` atomically: write a temporary file, fsync it, rename it over."""
    temporary = Path(root) / f".{LATEST_FILE}.{os.getpid()}.tmp"
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(version + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, Path(root) / LATEST_FILE)


# --- checks ------------------------------------------------------------------------------------------------------


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    try:
        manifest = orjson.loads(path.read_bytes())
    except FileNotFoundError as exc:
        raise ArtifactError(f"missing {path}") from exc
    except orjson.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path} must hold a JSON object")
    found = manifest.get("format_version")
    if found != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format_version {found!r} is not supported (this code reads {FORMAT_VERSION})")
    for key in ("version", "n_items", "dim", "ranker_config", "files"):
        if key not in manifest:
            raise ArtifactError(f"{path} lacks {key!r}")
    return manifest


def _verify_files(directory: Path, manifest: dict[str, Any]) -> None:
    files = manifest["files"]
    if not isinstance(files, dict):
        raise ArtifactError(f"{MANIFEST_FILE}: 'files' must map file names to SHA-256 digests")
    missing_entries = [name for name in REQUIRED_FILES if name not in files]
    if missing_entries:
        raise ArtifactError(f"{MANIFEST_FILE} does not list {missing_entries}")
    for name, expected in files.items():
        path = directory / name
        if Path(name).name != name:
            raise ArtifactError(f"{MANIFEST_FILE} lists a path outside the version directory: {name!r}")
        if not path.is_file():
            raise ArtifactError(f"missing {path}")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(f"{path} is corrupt: its sha256 {actual} differs from the manifest's {expected}")


def _int_field(manifest: dict[str, Any], key: str) -> int:
    value = manifest[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ArtifactError(f"{MANIFEST_FILE}: {key} must be a positive integer, got {value!r}")
    return value


def _read_item_ids(path: Path) -> list[str]:
    try:
        item_ids = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(item_ids, list) or not all(isinstance(item, str) for item in item_ids):
        raise ArtifactError(f"{path} must hold a JSON list of item id strings")
    if len(set(item_ids)) != len(item_ids):
        raise ArtifactError(f"{path} lists an item id twice")
    return item_ids


def _load_ranker(path: Path, manifest: dict[str, Any], n_items: int, dim: int) -> SequenceRanker:
    try:
        config = RankerConfig.from_dict(manifest["ranker_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{MANIFEST_FILE}: invalid ranker_config: {exc}") from exc
    if config.n_items != n_items or config.dim != dim:
        raise ArtifactError(
            f"{MANIFEST_FILE}: ranker_config is {config.n_items} items x {config.dim}, but n_items={n_items}, dim={dim}"
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc
    table = state.get("item_embedding.weight")
    if table is None or tuple(table.shape) != (n_items + 1, dim):
        shape = None if table is None else tuple(table.shape)
        raise ArtifactError(f"{path}: item table of shape {shape}, expected {(n_items + 1, dim)} (+1 padding row)")
    ranker = SequenceRanker(config)
    try:
        ranker.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # missing/unexpected keys or mismatched shapes
        raise ArtifactError(f"{path} does not fit the manifest's ranker_config: {exc}") from exc
    ranker.eval()
    ranker.requires_grad_(False)
    if not all(bool(torch.isfinite(tensor).all()) for tensor in state.values() if tensor.is_floating_point()):
        raise ArtifactError(f"{path} holds NaN or infinite weights")
    return ranker


def _load_student(directory: Path, manifest: dict[str, Any], teacher: SequenceRanker) -> SequenceRanker | None:
    """The distilled student of ``teacher``, its item table tied to the teacher's; None when not distilled.

    The file holds every weight of the student but the item table, which it shares with the teacher by
    construction (the student was trained with the teacher's table frozen): one table serves retrieval, the
    index, live items and both rankers.
    """
    if STUDENT_FILE not in manifest["files"]:
        if "student" in manifest:
            raise ArtifactError(f"{MANIFEST_FILE} describes a student but does not list {STUDENT_FILE}")
        return None
    path = directory / STUDENT_FILE
    try:
        config = RankerConfig.from_dict(manifest["student"]["ranker_config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{MANIFEST_FILE}: invalid student ranker_config: {exc}") from exc
    if (config.n_items, config.dim) != (teacher.config.n_items, teacher.config.dim):
        raise ArtifactError(
            f"{MANIFEST_FILE}: the student is {config.n_items} items x {config.dim}, its teacher "
            f"{teacher.config.n_items} x {teacher.config.dim}: a student must share the teacher's item table"
        )
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from exc
    if ITEM_TABLE_KEY in state:
        raise ArtifactError(f"{path} holds an item table of its own; a student shares its teacher's")
    student = SequenceRanker(config)
    try:
        missing, unexpected = student.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # mismatched shapes
        raise ArtifactError(f"{path} does not fit the manifest's student ranker_config: {exc}") from exc
    absent = sorted(set(missing) - {ITEM_TABLE_KEY})
    if unexpected or absent:
        raise ArtifactError(
            f"{path} does not fit the manifest's student ranker_config: missing {absent}, unexpected {unexpected}"
        )
    if not all(bool(torch.isfinite(tensor).all()) for tensor in state.values() if tensor.is_floating_point()):
        raise ArtifactError(f"{path} holds NaN or infinite weights")
    student.item_embedding = teacher.item_embedding  # the same module, the same tensor: E is held once
    student.eval()
    student.requires_grad_(False)
    return student
