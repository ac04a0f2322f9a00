"""The encoder-decoder Transformer of "Attention Is All You Need".

Vaswani et al., "Attention Is All You Need", 2017, arXiv:1706.03762: post-LN layers
(LayerNorm(x + Sublayer(x)), Section 3.1), sinusoidal positions (Section 3.5), embeddings scaled
by sqrt(d_model) and optionally shared with the pre-softmax projection (Section 3.4), residual
dropout and label smoothing (Section 5.4). Attention itself is ``snippets.attention``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from snippets.attention import MultiHeadAttention, causal_mask


# --8<-- [start:config]
@dataclass
class TransformerConfig:
    """Defaults are the base model of Table 3 with the shared 37K BPE vocabulary of EN-DE."""

    vocab_size: int = 37000  # one vocabulary for source and target
    d_model: int = 512
    n_heads: int = 8
    d_ff: int = 2048
    n_layers: int = 6  # N: layers in the encoder, and again in the decoder
    dropout: float = 0.1  # P_drop
    max_len: int = 512  # rows of the positional-encoding table
    share_embeddings: bool = True  # source, target and pre-softmax weights are one matrix


BASE = TransformerConfig()
BIG = TransformerConfig(d_model=1024, n_heads=16, d_ff=4096, dropout=0.3)
# --8<-- [end:config]


# --8<-- [start:positions]
def sinusoidal_positions(max_len: int, d_model: int) -> torch.Tensor:
    """Section 3.5: PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(same angle).

    Returns (max_len, d_model). Each pair of features is a rotation at its own frequency, so
    PE(pos + k) is a fixed linear function of PE(pos).
    """
    pos = torch.arange(max_len, dtype=torch.float32)[:, None]  # (max_len, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float32)  # (d_model/2,) the even features 2i
    angle = pos / 10000 ** (two_i / d_model)  # (max_len, d_model/2)
    pe = torch.empty(max_len, d_model)
    pe[:, 0::2] = angle.sin()
    pe[:, 1::2] = angle.cos()
    return pe  # (max_len, d_model)


# --8<-- [end:positions]


# --8<-- [start:ffn]
class PositionwiseFFN(nn.Module):
    """FFN(x) = max(0, x W1 + b1) W2 + b2  (Eq. 2): the same two matrices at every position."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)  # W1, b1: d_model -> d_ff (512 -> 2048 in base)
        self.linear2 = nn.Linear(d_ff, d_model)  # W2, b2: d_ff -> d_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.linear1(x).relu())  # (B, L, d_ff) -> (B, L, d_model)


# --8<-- [end:ffn]


# --8<-- [start:encoder-layer]
class EncoderLayer(nn.Module):
    """Self-attention, then the FFN; each sub-layer wrapped as LayerNorm(x + Dropout(sublayer))."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.ffn = PositionwiseFFN(cfg.d_model, cfg.d_ff)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)  # residual dropout (Section 5.4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, Ls, d_model); mask bool, broadcastable to (B, n_heads, Ls, Ls), True = attend."""
        # Q, K and V are all projections of x: every source position looks at every other one.
        x = self.norm1(x + self.dropout(self.self_attn(x, mask=mask)))  # (B, Ls, d_model)
        return self.norm2(x + self.dropout(self.ffn(x)))  # (B, Ls, d_model)


# --8<-- [end:encoder-layer]


# --8<-- [start:decoder-layer]
class DecoderLayer(nn.Module):
    """Masked self-attention, cross-attention to the encoder output, then the FFN (post-LN)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.ffn = PositionwiseFFN(cfg.d_model, cfg.d_ff)
        self.norm3 = nn.LayerNorm(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        y: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """y (B, Lt, d_model) target side; memory (B, Ls, d_model) the encoder output.

        Returns (B, Lt, d_model), and the cross-attention weights (B, n_heads, Lt, Ls) when
        ``need_weights``.
        """
        # Position t may read target positions <= t only (Section 3.2.3).
        causal = causal_mask(y.size(1), device=y.device)  # (Lt, Lt)
        y = self.norm1(y + self.dropout(self.self_attn(y, mask=causal)))  # (B, Lt, d_model)
        # Queries come from the decoder (y); keys and values from the encoder output (memory).
        attended, weights = self.cross_attn(y, context=memory, mask=memory_mask, need_weights=True)
        y = self.norm2(y + self.dropout(attended))  # (B, Lt, d_model)
        y = self.norm3(y + self.dropout(self.ffn(y)))  # (B, Lt, d_model)
        return (y, weights) if need_weights else y


# --8<-- [end:decoder-layer]


# --8<-- [start:model]
class Transformer(nn.Module):
    """Encoder-decoder Transformer (Figure 1). Post-LN layers end in a LayerNorm: no final one."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.src_embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.tgt_embed = (
            self.src_embed if cfg.share_embeddings else nn.Embedding(cfg.vocab_size, cfg.d_model)
        )
        # Fixed, not learned: a buffer, so it is neither trained nor counted as a parameter.
        pe = sinusoidal_positions(cfg.max_len, cfg.d_model)  # (max_len, d_model)
        self.register_buffer("pe", pe, persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.n_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.n_layers))
        # Pre-softmax projection; the paper names no bias here, so there is none.
        self.out_proj = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.share_embeddings:
            self.out_proj.weight = self.src_embed.weight  # one (vocab_size, d_model) matrix
        for embed in dict.fromkeys([self.src_embed, self.tgt_embed]):  # each table once
            # N(0, 1/d_model) init: after the sqrt(d_model) scaling each feature has variance 1,
            # the same scale as the sinusoids (values in [-1, 1]) it is added to.
            nn.init.normal_(embed.weight, std=cfg.d_model**-0.5)

    def embed(self, ids: torch.Tensor, table: nn.Embedding) -> torch.Tensor:
        """ids (B, L) -> Dropout(table(ids) * sqrt(d_model) + PE)  (Sections 3.4, 3.5, 5.4)."""
        L = ids.size(1)
        if L > self.cfg.max_len:
            raise ValueError(f"sequence of {L} tokens exceeds max_len={self.cfg.max_len}")
        x = table(ids) * math.sqrt(self.cfg.d_model) + self.pe[:L]  # (B, L, d_model)
        return self.dropout(x)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """src (B, Ls) ids; src_mask (B, Ls) bool, True at real tokens. Returns (B, Ls, d_model)."""
        mask = None if src_mask is None else src_mask[:, None, None, :]  # (B, 1, 1, Ls)
        x = self.embed(src, self.src_embed)  # (B, Ls, d_model)
        for layer in self.encoder:
            x = layer(x, mask)
        return x

    def decode(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """tgt (B, Lt) ids, memory (B, Ls, d_model) -> logits (B, Lt, vocab_size).

        With ``need_weights``, also each layer's cross-attention weights (B, n_heads, Lt, Ls).
        """
        mask = None if src_mask is None else src_mask[:, None, None, :]  # (B, 1, 1, Ls)
        y = self.embed(tgt, self.tgt_embed)  # (B, Lt, d_model)
        cross_weights = []
        for layer in self.decoder:
            y, weights = layer(y, memory, mask, need_weights=True)
            cross_weights.append(weights)
        logits = self.out_proj(y)  # (B, Lt, vocab_size)
        return (logits, cross_weights) if need_weights else logits

    def forward(
        self, src: torch.Tensor, tgt: torch.Tensor, src_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Teacher forcing: logits[:, t] (B, Lt, vocab_size) is the prediction for tgt[:, t + 1]."""
        return self.decode(tgt, self.encode(src, src_mask), src_mask)


# --8<-- [end:model]


# --8<-- [start:greedy]
@torch.no_grad()
def greedy_decode(
    model: Transformer, src: torch.Tensor, bos_id: int, n_tokens: int
) -> torch.Tensor:
    """Encode src (B, Ls) once, then append the most likely token n_tokens times.

    Returns (B, n_tokens), without the start token; call it on a model in eval mode. Recomputes the decoder over the whole prefix at
    each step (no key/value cache: the toy sequences are short).
    """
    memory = model.encode(src)  # (B, Ls, d_model)
    out = torch.full((src.size(0), 1), bos_id, dtype=torch.long, device=src.device)  # (B, 1)
    for _ in range(n_tokens):
        logits = model.decode(out, memory)[:, -1]  # (B, vocab_size): prediction after the prefix
        out = torch.cat([out, logits.argmax(-1, keepdim=True)], dim=1)  # (B, t + 1)
    return out[:, 1:]


# --8<-- [end:greedy]


# --8<-- [start:label-smoothing]
def label_smoothed_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, eps: float
) -> torch.Tensor:
    """Cross-entropy against q = (1 - eps) * one_hot(target) + eps / K  (Section 5.4, eps_ls).

    logits (N, K), target (N,). Since q mixes a one-hot and the uniform distribution, the loss is
    (1 - eps) * NLL + eps * (mean over the K classes of -log p). Same as
    ``F.cross_entropy(logits, target, label_smoothing=eps)``.
    """
    log_p = logits.log_softmax(dim=-1)  # (N, K)
    nll = -log_p.gather(-1, target[:, None]).squeeze(-1)  # (N,) -log p(correct)
    uniform = -log_p.mean(dim=-1)  # (N,) cross-entropy against the uniform distribution
    return ((1 - eps) * nll + eps * uniform).mean()


def label_smoothing_floor(eps: float, n_classes: int) -> tuple[float, float]:
    """The best a model can do under smoothed targets: (p(correct) at the optimum, loss floor).

    The cross-entropy H(q, p) is smallest at p = q, where p(correct) = 1 - eps + eps / K and the
    loss equals the entropy H(q): it cannot reach 0 even when every argmax is right.
    """
    p_correct = 1 - eps + eps / n_classes
    q = [p_correct] + [eps / n_classes] * (n_classes - 1)  # the smoothed target distribution
    entropy = sum(-p * math.log(p) for p in q if p > 0)  # H(q); 0 log 0 = 0
    return p_correct, entropy


# --8<-- [end:label-smoothing]


# --8<-- [start:param-count]
def mha_parameter_count(d_model: int) -> int:
    """W^Q, W^K, W^V, W^O (d_model x d_model each) and their biases: 4 d^2 + 4 d."""
    return 4 * d_model * d_model + 4 * d_model


def ffn_parameter_count(d_model: int, d_ff: int) -> int:
    """W1 (d x d_ff), b1 (d_ff), W2 (d_ff x d), b2 (d): 2 d d_ff + d_ff + d."""
    return 2 * d_model * d_ff + d_ff + d_model


def parameter_count(cfg: TransformerConfig) -> dict[str, int]:
    """Parameters of ``Transformer(cfg)`` by formula, per part and in total.

    Each LayerNorm has a gain and a bias (2 d). Shared embeddings count one vocab x d matrix;
    unshared ones three (source, target, pre-softmax). Positional encodings are fixed: 0.
    """
    d, V, N = cfg.d_model, cfg.vocab_size, cfg.n_layers
    mha, ffn, norm = mha_parameter_count(d), ffn_parameter_count(d, cfg.d_ff), 2 * d
    counts = {
        "embeddings": V * d * (1 if cfg.share_embeddings else 3),
        "encoder": N * (mha + ffn + 2 * norm),  # self-attention, FFN, 2 LayerNorms
        "decoder": N * (2 * mha + ffn + 3 * norm),  # + cross-attention and a third LayerNorm
    }
    counts["total"] = sum(counts.values())
    return counts


# --8<-- [end:param-count]
