"""The sequence ranker: a SASRec-style causal self-attention encoder over a user's recent items.

Input rows are item rows of the embedding table, LEFT-padded with -1 so the last column is always the most
recent item; the hidden state there is the user representation, and an item's score is its inner product
with that state. The item table is shared between input and output, and it is the same table ``E`` the worker
uses for retrieval (``item_embeddings()``): training fits it to both jobs (see ``model/train.py``).

Positional embeddings are aligned to the *right*: the most recent item always gets the last position, however
long the input is, so histories shorter than ``max_len`` need no padding to full length and a batch can be cut
to its longest history. With ``positions="relative"`` there are no positional embeddings at all: each head adds
a learned bias per distance between query and key to its attention logits, so the state at position ``t`` of a
training window is exactly what a worker computes for the history that ends there (absolute positions give the
training positions inside a window other embeddings than the last position serving reads).

Each block mixes two sequence mixers (``filter_mix`` = α): causal self-attention, and a causal *low-pass filter*
(an exponential moving average over the items so far, one learned decay per channel) whose high-frequency rest
``x − low`` is rescaled by a learned per-channel gain, ``low + β²·(x − low)``. This is the inductive bias of
BSARec (Shin et al., AAAI 2024), which filters in the frequency domain over the whole padded window; a causal
moving average keeps every position's state independent of later items, so the model still trains on every
position of a window at once and serves incrementally.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

PAD = -1
"""Item row meaning "no item" in histories and candidate lists."""


@dataclass(frozen=True)
class RankerConfig:
    """Shape of a :class:`SequenceRanker`; stored in every artifact manifest to rebuild the module."""

    n_items: int
    dim: int = 64
    max_len: int = 50
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    # The defaults below are the architecture of artifacts written before these fields existed, so those load
    # unchanged; training passes every field from its TrainConfig.
    norm: Literal["pre", "post"] = "pre"
    ffn_factor: int = 1
    filter_mix: float = 0.0
    positions: Literal["absolute", "relative"] = "absolute"

    def __post_init__(self) -> None:
        if self.n_items < 1:
            raise ValueError("n_items must be positive")
        if self.dim < 1 or self.max_len < 1 or self.n_layers < 0 or self.n_heads < 1:
            raise ValueError("dim, max_len and n_heads must be positive, n_layers non-negative")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        if self.norm not in ("pre", "post") or self.positions not in ("absolute", "relative"):
            raise ValueError(f"unknown norm {self.norm!r} or positions {self.positions!r}")
        if self.ffn_factor < 1 or not 0.0 <= self.filter_mix <= 1.0:
            raise ValueError("ffn_factor must be positive and filter_mix in [0, 1]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RankerConfig:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


class _LowPass(nn.Module):
    """Causal low-pass filter with a rescaled high-frequency rest: ``low + β²·(x − low)`` per channel.

    ``low`` at position ``i`` is the moving average ``Σ_{j≤i} a^{i−j}·x_j / Σ_{j≤i} a^{i−j}`` over the positions that
    hold an item, with a learned decay ``a`` per channel: a smooth summary of the user's recent taste that the
    attention's sharp, item-to-item matches are mixed with.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.decay_logit = nn.Parameter(torch.full((dim,), 2.0))  # a = sigmoid(2) ≈ 0.88 at the start
        self.high_gain = nn.Parameter(torch.full((dim,), 0.5))  # β; β² = 0.25 at the start

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(x.shape[1], device=x.device)
        distance = (steps.unsqueeze(1) - steps.unsqueeze(0)).to(x.dtype)  # [i, j] = i - j
        weights = torch.exp(distance.clamp_min(0).unsqueeze(-1) * F.logsigmoid(self.decay_logit))  # [i, j, dim]
        weights = weights * (distance >= 0).unsqueeze(-1)
        present = valid.to(x.dtype)
        # Padding is zeroed, so it adds nothing to the sum and is left out of the normaliser.
        total = torch.einsum("ijd,bjd->bid", weights, x * present.unsqueeze(-1))
        mass = torch.einsum("ijd,bj->bid", weights, present).clamp_min(1e-6)
        low = total / mass
        return low + self.high_gain.square() * (x - low)


class _Block(nn.Module):
    """One transformer block: a sequence mixer (causal self-attention, or its mix with :class:`_LowPass`), then
    a position-wise feed-forward net, with layer norm before each (``pre``) or after each residual sum (``post``,
    as BERT, SASRec's reference code and BSARec)."""

    def __init__(self, config: RankerConfig) -> None:
        super().__init__()
        dim, self.n_heads, self.dropout = config.dim, config.n_heads, config.dropout
        self.post_norm = config.norm == "post"
        self.filter_mix = config.filter_mix
        self.attention_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attention_out = nn.Linear(dim, dim)
        if self.filter_mix > 0:
            self.low_pass = _LowPass(dim)
            if self.post_norm:
                self.filter_norm = nn.LayerNorm(dim)
        self.ffn_norm = nn.LayerNorm(dim)
        inner = dim * config.ffn_factor
        self.ffn = nn.Sequential(nn.Linear(dim, inner), nn.GELU(), nn.Dropout(config.dropout), nn.Linear(inner, dim))
        self.residual_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if self.post_norm:
            mixed = self.attention_norm(x + self.residual_dropout(self._attend(x, allowed)))
            if self.filter_mix > 0:
                filtered = self.filter_norm(x + self.residual_dropout(self.low_pass(x, valid)))
                mixed = self.filter_mix * filtered + (1.0 - self.filter_mix) * mixed
            return self.ffn_norm(mixed + self.residual_dropout(self.ffn(mixed)))
        normed = self.attention_norm(x)
        mixed = self._attend(normed, allowed)
        if self.filter_mix > 0:
            mixed = self.filter_mix * self.low_pass(normed, valid) + (1.0 - self.filter_mix) * mixed
        x = x + self.residual_dropout(mixed)
        return x + self.residual_dropout(self.ffn(self.ffn_norm(x)))

    def _attend(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_heads, dim // self.n_heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        return self.attention_out(attended.transpose(1, 2).reshape(batch, length, dim))


class SequenceRanker(nn.Module):
    """Scores items for a user from the user's recent item sequence (next-item prediction)."""

    def __init__(self, config: RankerConfig) -> None:
        super().__init__()
        self.config = config
        # Row n_items is the padding row: always zero, never trained, never scored.
        self.item_embedding = nn.Embedding(config.n_items + 1, config.dim, padding_idx=config.n_items)
        if config.positions == "absolute":
            self.position_embedding = nn.Embedding(config.max_len, config.dim)
        else:
            # Attention bias per head and query-key distance 0..max_len-1 (distance 0: the item itself).
            self.distance_bias = nn.Parameter(torch.zeros(config.n_heads, config.max_len))
        self.embedding_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(_Block(config) for _ in range(config.n_layers))
        # Post-norm blocks end in a layer norm; their input is normed instead.
        post = config.norm == "post"
        self.input_norm = nn.LayerNorm(config.dim) if post else nn.Identity()
        self.final_norm = nn.Identity() if post else nn.LayerNorm(config.dim)
        self._input_scale = math.sqrt(config.dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Item rows of norm ≈ 1 give logits of order 1 against the layer-normed hidden state (norm ≈ sqrt(dim)),
        # and keep the raw inner products the worker's retrieval uses in a sane range from the first step.
        std = 1.0 / math.sqrt(self.config.dim)
        nn.init.normal_(self.item_embedding.weight, std=std)
        if self.config.positions == "absolute":
            nn.init.normal_(self.position_embedding.weight, std=std)
        with torch.no_grad():
            self.item_embedding.weight[self.config.n_items].zero_()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    # --- the contract used by the worker ------------------------------------------------------------------
    def item_embeddings(self) -> torch.Tensor:
        """The shared item table ``E`` ``[n_items, dim]`` (a view: detach before using it outside torch)."""
        return self.item_embedding.weight[: self.config.n_items]

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        """User vectors ``[B, dim]`` from histories ``[B, L]`` of item rows (-1 = padding, most recent last).

        The vector is the hidden state at the last column that holds an item, so stray -1 entries (an item the
        model does not know) are skipped. Rows that are all padding get a zero vector: every item scores 0 and
        a stable sort keeps the candidates in retrieval order.
        """
        history = self._fit_length(history)
        hidden = self.forward(history)
        valid = history != PAD
        length = history.shape[1]
        last = length - 1 - torch.flip(valid, dims=[1]).to(torch.int64).argmax(dim=1)
        user = hidden[torch.arange(len(history), device=history.device), last]
        return user * valid.any(dim=1, keepdim=True).to(user.dtype)

    def score(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, C]`` of candidate item rows ``[B, C]`` for each history; -1 candidates score -inf."""
        user = self.encode(history)
        real = candidates != PAD
        vectors = self.item_embedding(torch.where(real, candidates, self.config.n_items))
        scores = torch.einsum("bd,bcd->bc", user, vectors)
        return scores.masked_fill(~real, float("-inf"))

    def score_all(self, history: torch.Tensor) -> torch.Tensor:
        """Scores ``[B, n_items]`` of the whole catalogue (offline evaluation)."""
        return self.encode(history) @ self.item_embeddings().T

    # --- training ----------------------------------------------------------------------------------------
    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[B, L, dim]`` at every position; position ``t`` sees items ``0..t`` only.

        ``L`` must not exceed ``max_len`` (use :meth:`encode` for arbitrary lengths). Training applies the
        next-item loss at every position that has a target.
        """
        length = history.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"history length {length} exceeds max_len {self.config.max_len}")
        valid = history != PAD
        rows = torch.where(valid, history, self.config.n_items)
        x = self.item_embedding(rows) * self._input_scale
        if self.config.positions == "absolute":
            x = x + self.position_embedding.weight[self.config.max_len - length :]
        x = self.embedding_dropout(self.input_norm(x)) * valid.unsqueeze(-1)
        allowed = self._attention_mask(valid)
        if self.config.positions == "relative":
            steps = torch.arange(length, device=history.device)
            distance = (steps.unsqueeze(1) - steps.unsqueeze(0)).clamp(0, self.config.max_len - 1)
            allowed = self.distance_bias[:, distance].unsqueeze(0).masked_fill(~allowed, float("-inf"))
        for block in self.blocks:
            x = block(x, allowed, valid) * valid.unsqueeze(-1)
        return self.final_norm(x)

    @staticmethod
    def _attention_mask(valid: torch.Tensor) -> torch.Tensor:
        """bool ``[B, 1, L, L]``: query i may attend key j when j ≤ i and j holds an item.

        Every position may also attend itself, so a padding query never has an empty row (softmax over
        nothing is NaN); padding outputs are zeroed and never read.
        """
        length = valid.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=valid.device).tril()
        diagonal = torch.eye(length, dtype=torch.bool, device=valid.device)
        return ((causal & valid.unsqueeze(1)) | diagonal).unsqueeze(1)

    def _fit_length(self, history: torch.Tensor) -> torch.Tensor:
        """Keep the ``max_len`` most recent columns; at least one column so empty histories work."""
        if history.dim() != 2:
            raise ValueError(f"history must be [batch, length], got shape {tuple(history.shape)}")
        if history.shape[1] > self.config.max_len:
            return history[:, -self.config.max_len :]
        if history.shape[1] == 0:
            return torch.full((history.shape[0], 1), PAD, dtype=torch.int64, device=history.device)
        return history
