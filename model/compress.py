"""Compressed forms of the sequence ranker: dynamic int8 quantisation, and a smaller student distilled from it.

A worker scores every warm user's candidates with the ranker on one CPU thread, so the ranker's cost per call is
what compression is for; its quality cost is measured by ``bench/bench_compression.py`` through the served replay.

* **int8** (:func:`quantize_int8`): the ranker's ``Linear`` layers get int8 weights (per output channel) and int8
  activations quantised on the fly (``torch.ao.quantization.quantize_dynamic``), applied when a worker builds its
  served model. Embeddings, layer norms and attention stay float32. The activations' scale is taken over the
  whole call, so a user's scores move slightly with the other users of the micro-batch (by up to about 0.15 on
  Beauty, where scores spread by about 1.8), unlike the float ranker's.
* **distilled** (:func:`distill`): a student ranker with fewer self-attention blocks (and heads) learns the
  teacher's temperature-softened softmax over the whole catalogue (KL divergence) next to the usual next-item
  cross-entropy, on the training split the teacher was trained on; the validation split picks its epoch and its
  item-kNN blend weight, and the test split is never read. ``streamrec distill`` publishes it as a new version
  (``student.safetensors``, manifest key ``student``).

The item table ``E`` is never compressed: it is what retrieval, the FAISS index and live catalog items (scored
``h · E[item]``) use, so the student is trained with the teacher's table frozen and shares it when loaded, and the
int8 ranker keeps a float32 table.

A worker imports this module to build its ranker; the training helpers it borrows for distillation
(``model/train.py``, which loads matplotlib) are imported by the distillation functions only, so a worker does not
pay for them.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear
from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
from tqdm.auto import tqdm

from streamrec.model.artifacts import (
    FORMAT_VERSION,
    ITEM_TABLE_KEY,
    STUDENT_FILE,
    ArtifactError,
    ModelArtifacts,
    load_artifacts,
)
from streamrec.model.baselines import Histories, ItemKNNModel, blend_scores
from streamrec.model.config import RankerCompression
from streamrec.model.evaluate import EVAL_MAX_SCORES, RankerScorer
from streamrec.model.event_log import EventLog
from streamrec.model.metrics import summarize, target_ranks
from streamrec.model.ranker import RankerConfig, SequenceRanker
from streamrec.model.splits import LeaveOneOutSplit, leave_one_out

if TYPE_CHECKING:
    from streamrec.model.train import TrainingWindows

logger = logging.getLogger(__name__)

RANKER_COMPRESSIONS: tuple[RankerCompression, ...] = get_args(RankerCompression)
DISTILLED: frozenset[RankerCompression] = frozenset({"distilled", "distilled_int8"})
QUANTIZED: frozenset[RankerCompression] = frozenset({"int8", "distilled_int8"})


# --- serving ---------------------------------------------------------------------------------------------------


def with_compressed_ranker(artifacts: ModelArtifacts, compression: RankerCompression) -> ModelArtifacts:
    """``artifacts`` with the ranker ``compression`` serves, and that ranker's item-kNN blend weight; the item
    table, index and every other part unchanged (retrieval keeps the float table).

    The distilled forms serve the version's student with the weight its distillation chose on validation (the
    teacher's when none was recorded). Raises :class:`ArtifactError` when the version has no student: serving the
    teacher instead would silently defeat the setting.
    """
    if compression not in RANKER_COMPRESSIONS:
        raise ValueError(f"unknown ranker compression {compression!r}: use one of {', '.join(RANKER_COMPRESSIONS)}")
    if compression == "none":
        return artifacts
    ranker, blend_weight = artifacts.ranker, artifacts.blend_weight
    if compression in DISTILLED:
        ranker = require_student(artifacts, compression)
        recorded = artifacts.manifest.get("student", {}).get("blend_weight")
        if artifacts.item_knn is not None and isinstance(recorded, int | float) and recorded >= 0:
            blend_weight = float(recorded)
    if compression in QUANTIZED:
        ranker = quantize_int8(ranker)
    return replace(artifacts, ranker=ranker, blend_weight=blend_weight)


def require_student(artifacts: ModelArtifacts, compression: RankerCompression) -> SequenceRanker:
    """The version's distilled student; :class:`ArtifactError` saying how to get one when it has none."""
    if artifacts.student is None:
        raise ArtifactError(
            f"ranker_compression={compression} needs a distilled student, but model version {artifacts.version} "
            f"({artifacts.directory}) has none; run 'streamrec distill --artifacts DIR --events FILE' on it, or set "
            "STREAMREC_RANKER_COMPRESSION to none or int8"
        )
    return artifacts.student


def check_servable(artifacts: ModelArtifacts, compression: RankerCompression) -> None:
    """Raise :class:`ArtifactError` when ``artifacts`` cannot be served with ``compression`` (a worker checks a
    new version before swapping it in)."""
    if compression in DISTILLED:
        require_student(artifacts, compression)


def quantize_int8(ranker: SequenceRanker) -> SequenceRanker:
    """A copy of ``ranker`` whose ``Linear`` layers compute in int8 (weights per output channel, activations
    quantised per call); ``ranker`` itself stays float, as offline evaluation and the loaded version read it."""
    with warnings.catch_warnings():
        # torch 2.13 marks torch.ao.quantization deprecated in favour of torchao, which this project does not
        # depend on; its fbgemm kernels are still the fast int8 path on CPU (a hand-written int8 matmul measured
        # 5x slower than float at this width). Said once here rather than at every model load.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_channel.*", category=UserWarning)
        quantized = quantize_dynamic(
            copy.deepcopy(ranker), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
        )
    quantized.eval()
    quantized.requires_grad_(False)
    return quantized


def encoder_parameter_count(ranker: SequenceRanker) -> int:
    """Parameters of the encoder apart from the item table (positions, blocks, final norm), float or int8."""
    count = sum(p.numel() for name, p in ranker.named_parameters() if name != ITEM_TABLE_KEY)
    for module in ranker.modules():
        if isinstance(module, DynamicQuantizedLinear):  # packed weights are not parameters
            bias = module.bias()
            count += module.weight().numel() + (0 if bias is None else bias.numel())
    return count


def weight_bytes(ranker: SequenceRanker, with_item_table: bool = True) -> int:
    """Bytes of the weights as served: float32 tensors at 4 bytes, int8 weights at 1 (plus a float32 scale per
    output channel). The item table (``with_item_table``) counts once, shared or not."""
    total = 0
    for name, tensor in ranker.state_dict().items():
        if isinstance(tensor, torch.Tensor) and not tensor.is_quantized and (with_item_table or name != ITEM_TABLE_KEY):
            total += tensor.numel() * tensor.element_size()
    for module in ranker.modules():
        if isinstance(module, DynamicQuantizedLinear):
            weight, bias = module.weight(), module.bias()
            total += weight.numel() * weight.element_size() + weight.shape[0] * 4
            total += 0 if bias is None else bias.numel() * bias.element_size()
    return total


# --- distillation ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistillConfig:
    """Settings of one distillation; recorded in the new version's manifest.

    Chosen on Amazon Beauty's validation split (NDCG@10 of a 1-block, 1-head student of the 2-block model, ranker
    alone / blended with the item-kNN at weight 8; the model's own: 0.0643 / 0.0672): temperature 2 with KL weight
    0.5 gave 0.0643 / 0.0670, temperature 4 0.0644 / 0.0670, temperature 1 0.0637 / 0.0663, KL weight 0.9
    0.0642 / 0.0669, the cross-entropy alone 0.0638 / 0.0667, a student without blocks 0.0581 / 0.0621.
    Temperatures 2 and 4 differ by 0.0001 alone and 0.00002 blended, a handful of the 22,363 users; 2 is kept. A
    student that starts from the teacher's first block peaks within 3 to 4 epochs, hence 8 at most.
    """

    layers: int = 1
    heads: int = 1
    temperature: float = 2.0
    kd_weight: float = 0.5  # weight of the KL term; the cross-entropy gets 1 − this
    max_epochs: int = 8
    patience: int = 3
    lr: float = 2e-3
    batch_size: int = 256
    dropout: float | None = None  # None: the teacher's
    init_from_teacher: bool = True  # blocks, positions and final norm start as the teacher's first ones
    seed: int = 0
    time_budget_s: float | None = None

    def __post_init__(self) -> None:
        if self.layers < 0 or self.heads < 1 or self.max_epochs < 1 or self.patience < 1 or self.batch_size < 1:
            raise ValueError("layers must be non-negative; heads, epochs, patience and batch size positive")
        if not self.temperature > 0 or not 0.0 <= self.kd_weight <= 1.0 or not self.lr > 0:
            raise ValueError("temperature and lr must be positive and kd_weight in [0, 1]")


@dataclass(frozen=True)
class Validation:
    """A ranker's figures on the validation split (full ranking, history excluded)."""

    ndcg_at_10: float
    hr_at_10: float
    blended_ndcg_at_10: dict[float, float]  # per item-kNN weight, when the version blends

    def as_dict(self) -> dict[str, Any]:
        return {
            "NDCG@10": self.ndcg_at_10,
            "HR@10": self.hr_at_10,
            "blended_NDCG@10": {str(weight): value for weight, value in self.blended_ndcg_at_10.items()},
        }


def student_of(teacher: SequenceRanker, config: DistillConfig) -> SequenceRanker:
    """A fresh student for ``teacher``: the teacher's width and item table (a frozen copy), ``config.layers``
    blocks of ``config.heads`` heads; with ``init_from_teacher`` its positions, first blocks and final norm start
    as the teacher's, so it starts from the teacher's first layers rather than from noise."""
    student = SequenceRanker(student_config_of(teacher.config, config))
    with torch.no_grad():
        student.item_embedding.weight.copy_(teacher.item_embedding.weight)
        if config.init_from_teacher:
            # Every tensor the two share by name and shape: positions, norms, the first blocks (a per-head
            # tensor of another head count is left fresh).
            taught = teacher.state_dict()
            for name, tensor in student.state_dict().items():
                if name in taught and taught[name].shape == tensor.shape:
                    tensor.copy_(taught[name])
    student.item_embedding.weight.requires_grad_(False)
    return student


def distillation_losses(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    targets: torch.Tensor,
    item_table: torch.Tensor,
    temperature: float,
    kd_weight: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, KL, cross-entropy) over target positions ``[P, dim]``, each a mean over the positions.

    The KL term compares the softmaxes of both rankers' logits over the whole catalogue at ``temperature``; it is
    scaled by ``temperature²`` so its gradients keep the cross-entropy's size whatever the temperature (Hinton et
    al., 2015).
    """
    student_logits = student_hidden @ item_table.T
    with torch.no_grad():
        teacher_log_probs = F.log_softmax(teacher_hidden @ item_table.T / temperature, dim=-1)
    kl = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1), teacher_log_probs, log_target=True, reduction="batchmean"
    ) * (temperature**2)
    cross_entropy = F.cross_entropy(student_logits, targets)
    return kd_weight * kl + (1.0 - kd_weight) * cross_entropy, kl, cross_entropy


def validation_figures(
    ranker: SequenceRanker,
    split: LeaveOneOutSplit,
    users: np.ndarray,
    seed: int,
    item_knn: ItemKNNModel | None = None,
    blend_weights: Sequence[float] = (),
) -> Validation:
    """NDCG@10 and HR@10 of ``ranker`` on the validation split, and NDCG@10 of ``ranker + w · item_knn`` for each
    weight (``item_knn`` fit on the validation stage), with the evaluation's rank protocol (``model/metrics.py``)."""
    n_items = ranker.config.n_items
    targets = split.targets("valid")
    scorer = RankerScorer(ranker, ranker.config.max_len)
    rng = np.random.default_rng([seed, 2])
    alone: list[np.ndarray] = []
    blended: dict[float, list[np.ndarray]] = {float(w): [] for w in blend_weights} if item_knn is not None else {}
    step = max(1, min(512, EVAL_MAX_SCORES // n_items))
    for begin in range(0, len(users), step):
        batch = users[begin : begin + step]
        histories = Histories.of_users(split, batch, "valid")
        exclude = histories.item_sets()
        scores = scorer.score_users(histories)
        alone.append(target_ranks(scores, targets[batch], exclude, rng))
        if item_knn is not None and blended:
            knn = item_knn.score_users(histories).astype(np.float32)
            for weight, parts in blended.items():
                parts.append(target_ranks(blend_scores(scores, knn, weight), targets[batch], exclude, rng))
    summary = summarize(np.concatenate(alone))
    return Validation(
        ndcg_at_10=float(summary["NDCG@10"]),
        hr_at_10=float(summary["HR@10"]),
        blended_ndcg_at_10={w: float(summarize(np.concatenate(p))["NDCG@10"]) for w, p in blended.items()},
    )


def fit_student(
    teacher: SequenceRanker,
    windows: TrainingWindows,
    split: LeaveOneOutSplit,
    config: DistillConfig,
    users: np.ndarray,
    progress: bool = True,
) -> tuple[SequenceRanker, list[dict[str, float]], int]:
    """Train a student of ``teacher`` on the teacher's training windows; early stopping on validation NDCG@10.

    Returns the student at its best epoch (eval mode, gradients off), the history of every epoch and the best
    epoch's number.
    """
    from streamrec.model.train import EarlyStopping, clip_gradients, select_positions, window_batches

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    teacher.eval()
    student = student_of(teacher, config)
    table = student.item_embeddings()  # frozen: the teacher's E
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=config.lr, betas=(0.9, 0.98))
    history: list[dict[str, float]] = []
    stopping = EarlyStopping(student, config.patience, config.time_budget_s)
    epochs = tqdm(range(1, config.max_epochs + 1), desc="distill", unit="epoch", disable=not progress)
    for epoch in epochs:
        student.train()
        totals = np.zeros(3)
        batches = window_batches(windows.lengths, config.batch_size, rng)
        for batch in tqdm(batches, desc=f"epoch {epoch}", unit="batch", leave=False, disable=not progress):
            items, targets, _, _ = windows.batch(batch)
            positions = (targets.reshape(-1) >= 0).nonzero().squeeze(1)
            with torch.no_grad():
                teacher_hidden = select_positions(teacher(items), positions)
            student_hidden = select_positions(student(items), positions)
            losses = distillation_losses(
                student_hidden,
                teacher_hidden,
                targets.reshape(-1)[positions],
                table,
                config.temperature,
                config.kd_weight,
            )
            optimizer.zero_grad(set_to_none=True)
            losses[0].backward()
            clip_gradients(trainable, 5.0)
            optimizer.step()
            totals += [float(loss.detach()) for loss in losses]
        student.eval()
        validation = validation_figures(student, split, users, config.seed)
        record = {
            "epoch": epoch,
            "loss": float(totals[0] / len(batches)),
            "kl": float(totals[1] / len(batches)),
            "cross_entropy": float(totals[2] / len(batches)),
            "val_NDCG@10": validation.ndcg_at_10,
            "val_HR@10": validation.hr_at_10,
            "seconds": stopping.elapsed(),
        }
        history.append(record)
        epochs.set_postfix(loss=f"{record['loss']:.3f}", val_ndcg=f"{record['val_NDCG@10']:.4f}")
        logger.info("distillation epoch %d: %s", epoch, record)
        if stopping.should_stop(epoch, record["val_NDCG@10"]):
            break
    stopping.restore_best()
    student.eval()
    student.requires_grad_(False)
    return student, history, stopping.best_epoch


def distill(
    artifact_dir: Path, log: EventLog, config: DistillConfig, progress: bool = True, torch_threads: int | None = None
) -> Path:
    """Distil the ranker of the version at ``artifact_dir`` into a student and publish a new version beside it
    with the student added (every other file copied unchanged); ``LATEST`` is switched to it.

    ``log`` must be the event log the version was trained on (its fingerprint is checked): the student learns on
    the same training split, and the validation split picks its epoch and blend weight. Raises ``ValueError`` for
    another log, or for a student that would not be smaller than its teacher.
    """
    from streamrec.model.train import (
        check_trained_on,
        derive_version,
        first_fit_windows,
        recorded_train_config,
        validation_sample,
    )

    started = time.perf_counter()
    artifacts = load_artifacts(artifact_dir)
    teacher = artifacts.ranker
    check_trained_on(artifacts, log)
    if config.layers >= teacher.config.n_layers:
        raise ValueError(
            f"a student of {config.layers} layers is not smaller than its teacher of {teacher.config.n_layers}; "
            "pass fewer layers"
        )
    student_config_of(teacher.config, config)  # heads that do not divide the width fail now, not after the split
    train_config = recorded_train_config(artifacts.manifest)
    torch.set_num_threads(torch_threads or train_config.torch_threads or 2)
    split = leave_one_out(log, artifacts.row_of)
    windows = first_fit_windows(split, train_config)
    if len(windows) == 0:
        raise ValueError("no training targets: users need a 4th interaction to train on")
    users = validation_sample(split.n_users, len(artifacts.item_ids), train_config)
    logger.info(
        "distilling %s (%d layers) into %d layers x %d heads on %d windows",
        artifacts.version, teacher.config.n_layers, config.layers, config.heads, len(windows),
    )  # fmt: skip
    student, history, best_epoch = fit_student(teacher, windows, split, config, users, progress)
    fit_seconds = time.perf_counter() - started

    # The blend weight of the served score, chosen for the student as training chose the teacher's.
    item_knn = None
    weights = sorted({float(w) for w in train_config.blend_weights} | {0.0})
    if artifacts.item_knn is not None:
        params = artifacts.manifest.get("item_knn", {})
        knn_params = {"n_recent": int(params.get("n_recent", 3)), "decay": float(params.get("decay", 0.6))}
        item_knn = ItemKNNModel.fit(split, len(artifacts.item_ids), "valid", **knn_params)
    student_validation = validation_figures(student, split, users, config.seed, item_knn, weights)
    teacher_validation = validation_figures(teacher, split, users, config.seed, item_knn, weights)
    blended = student_validation.blended_ndcg_at_10
    blend_weight = max(blended, key=lambda w: (blended[w], -w)) if blended else None
    logger.info("student validation %s; teacher %s", student_validation, teacher_validation)

    section: dict[str, Any] = {
        "file": STUDENT_FILE,
        "ranker_config": student.config.to_dict(),
        "encoder_parameters": encoder_parameter_count(student),
        "teacher_encoder_parameters": encoder_parameter_count(teacher),
        "distillation": asdict(config)
        | {
            "epochs": len(history),
            "best_epoch": best_epoch,
            "seconds": round(time.perf_counter() - started, 2),
            "fit_seconds": round(fit_seconds, 2),
            "torch_threads": torch.get_num_threads(),
            "history": history,
        },
        "validation": {
            "protocol": "validation split, full ranking over the catalogue, history excluded; blended_NDCG@10: "
            "ranker logits + weight · item-kNN fit on the validation stage",
            "student": student_validation.as_dict(),
            "teacher": teacher_validation.as_dict(),
        },
    }
    if blend_weight is not None:
        section["blend_weight"] = blend_weight

    def write_student(path: Path) -> None:
        save_student(student, path, artifacts.version)

    return derive_version(artifacts, STUDENT_FILE, write_student, {"student": section}, frozenset({"student"}))


def save_student(student: SequenceRanker, path: Path, teacher_version: str) -> None:
    """The student's weights as safetensors, without the item table it shares with its teacher."""
    save_file(
        {name: tensor.detach().contiguous() for name, tensor in student.state_dict().items() if name != ITEM_TABLE_KEY},
        str(path),
        metadata={"teacher_version": teacher_version, "format_version": str(FORMAT_VERSION)},
    )


def student_config_of(teacher: RankerConfig, config: DistillConfig) -> RankerConfig:
    """The shape a student of ``teacher`` takes under ``config``; raises ``ValueError`` for one that cannot be
    built (heads that do not divide the width)."""
    dropout = teacher.dropout if config.dropout is None else config.dropout
    return replace(teacher, n_layers=config.layers, n_heads=config.heads, dropout=dropout)
