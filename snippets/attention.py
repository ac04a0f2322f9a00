"""Scaled dot-product attention and multi-head attention (MHA, GQA, MQA).

Vaswani et al., "Attention Is All You Need", 2017, arXiv:1706.03762 (Sections 3.2.1-3.2.2);
Shazeer, "Fast Transformer Decoding: One Write-Head is All You Need", 2019, arXiv:1911.02150 (MQA);
Ainslie et al., "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
Checkpoints", 2023, arXiv:2305.13245 (GQA).
"""

from __future__ import annotations

import math

import torch
from torch import nn


# --8<-- [start:sdpa]
def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V  (Eq. 1 of Vaswani et al.).

    q (..., Lq, d), k (..., Lk, d), v (..., Lk, dv); ``mask`` is boolean, broadcastable to
    (..., Lq, Lk), True where a query may attend. ``dropout``, if given, drops attention weights
    before they mix the values (as torch.nn.MultiheadAttention does). Returns
    (output (..., Lq, dv), weights (..., Lq, Lk)), the weights before dropout.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (..., Lq, Lk)
    if mask is not None:
        # Masked scores become -inf *before* the softmax: exp(-inf) = 0, so each row of
        # weights still sums to 1 over the positions that are allowed.
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)  # (..., Lq, Lk)
    mixing = weights if dropout is None else dropout(weights)
    return mixing @ v, weights  # (..., Lq, dv), (..., Lq, Lk)


# --8<-- [end:sdpa]


def causal_mask(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean (n, n) mask, True on and below the diagonal: position i sees positions <= i."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


# --8<-- [start:gqa]
def grouped_query_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    dropout: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of H query heads over Hkv <= H shared key/value heads (GQA, Ainslie et al. 2023).

    q (B, H, Lq, d), k (B, Hkv, Lk, d), v (B, Hkv, Lk, dv), H a multiple of Hkv: query head i reads
    key/value head i // (H // Hkv). Hkv = H is MHA, Hkv = 1 is MQA (Shazeer 2019). ``mask`` is
    boolean, broadcastable to (B, H, Lq, Lk). Returns (out (B, H, Lq, dv), weights (B, H, Lq, Lk)).
    """
    B, H, Lq, d = q.shape
    Hkv, Lk = k.size(1), k.size(2)
    if H % Hkv:
        raise ValueError(f"{H} query heads cannot be split into groups over {Hkv} key/value heads")
    G = H // Hkv  # query heads per key/value head
    # Query head i = j * G + g is query g of group j. Stacking a group's G heads along the query
    # axis lets them all meet the group's one K/V head in a single matmul: the K/V heads are never
    # repeated in memory, and each is read once per step, not G times.
    q = q.reshape(B, Hkv, G * Lq, d)  # (B, Hkv, G*Lq, d)
    if mask is not None:
        mask = mask.expand(B, H, Lq, Lk).reshape(B, Hkv, G * Lq, Lk)  # (B, Hkv, G*Lq, Lk)
    out, weights = scaled_dot_product_attention(q, k, v, mask, dropout)  # (B, Hkv, G*Lq, dv)
    return out.view(B, H, Lq, -1), weights.view(B, H, Lq, Lk)  # (B, H, Lq, dv), (B, H, Lq, Lk)


# --8<-- [end:gqa]


# --8<-- [start:kvcache]
class KVCache:
    """Keys and values of the positions decoded so far, for one attention layer.

    Holds ``n_kv_heads`` heads only: with GQA or MQA the cache is n_heads / n_kv_heads times
    smaller. ``k`` and ``v`` are views of preallocated buffers that double when full, so a decoding
    step writes only its new position instead of copying the whole cache (made for inference:
    do not backpropagate through several appends).
    """

    def __init__(self) -> None:
        self.k: torch.Tensor | None = None  # (B, n_kv_heads, L, head_dim)
        self.v: torch.Tensor | None = None
        self._k_buf: torch.Tensor | None = None  # (B, n_kv_heads, capacity, head_dim)
        self._v_buf: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.k is None else self.k.size(2)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new positions' k, v (B, n_kv_heads, L_new, head_dim); return all of them."""
        L, end = len(self), len(self) + k.size(2)
        if self._k_buf is None or end > self._k_buf.size(2):
            # Double the capacity: the old cache is copied O(log L) times in all, not every step.
            B, Hkv, _, hd = k.shape
            k_buf = k.new_empty(B, Hkv, 2 * end, hd)  # (B, Hkv, capacity, hd)
            v_buf = v.new_empty(B, Hkv, 2 * end, v.size(3))
            if L:
                k_buf[:, :, :L], v_buf[:, :, :L] = self.k, self.v
            self._k_buf, self._v_buf = k_buf, v_buf
        self._k_buf[:, :, L:end], self._v_buf[:, :, L:end] = k, v
        self.k, self.v = self._k_buf[:, :, :end], self._v_buf[:, :, :end]  # (B, Hkv, L + L_new, hd)
        return self.k, self.v


# --8<-- [end:kvcache]


# --8<-- [start:mha]
class MultiHeadAttention(nn.Module):
    """Multi-head attention with ``n_kv_heads`` key/value heads.

    n_kv_heads = None (= n_heads) is MHA, 1 is MQA, anything between is GQA. Query head i reads
    key/value head i // (n_heads // n_kv_heads).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        if n_heads % n_kv_heads:
            raise ValueError(f"n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}")
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.group_size = n_heads // n_kv_heads  # query heads per key/value head
        self.head_dim = d_model // n_heads  # d_k = d_v = d_model / h (Section 3.2.2)
        self.q_proj = nn.Linear(d_model, n_heads * self.head_dim, bias=bias)  # W^Q_i, all heads
        # NEW in GQA/MQA: fewer key/value projections, shared by groups of query heads.
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)  # W^K_j
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.head_dim, bias=bias)  # W^V_j
        self.o_proj = nn.Linear(n_heads * self.head_dim, d_model, bias=bias)  # W^O
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        need_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x (B, Lq, d_model) gives the queries; ``context`` (B, Lk, d_model), default x, gives the
        keys and values (cross-attention: the encoder output). ``mask`` is boolean, broadcastable to
        (B, n_heads, Lq, Lk). With ``cache``, x holds only the new positions and their keys and
        values are appended to the cache. Returns (B, Lq, d_model), and the weights
        (B, n_heads, Lq, Lk) when ``need_weights``.
        """
        context = x if context is None else context
        B, Lq, _ = x.shape
        H, Hkv, hd = self.n_heads, self.n_kv_heads, self.head_dim

        # Head-major, as torch.nn.MultiheadAttention: head i is features [i*hd, (i+1)*hd).
        q = self.q_proj(x).view(B, Lq, H, hd).transpose(1, 2)  # (B, H, Lq, hd)
        # NEW in GQA/MQA: only Hkv key/value heads are computed, cached and read.
        k = self.k_proj(context).view(B, -1, Hkv, hd).transpose(1, 2)  # (B, Hkv, Lk, hd)
        v = self.v_proj(context).view(B, -1, Hkv, hd).transpose(1, 2)  # (B, Hkv, Lk, hd)
        if cache is not None:
            k, v = cache.append(k, v)  # (B, Hkv, L_past + Lk, hd)

        # Dropout on the attention weights, as torch.nn.MultiheadAttention and the paper's code do.
        out, weights = grouped_query_attention(q, k, v, mask, self.dropout)  # (B, H, Lq, hd)

        # Concat(head_1, ..., head_h) W^O  (Section 3.2.2)
        out = self.o_proj(out.transpose(1, 2).reshape(B, Lq, H * hd))  # (B, Lq, d_model)
        if need_weights:
            return out, weights
        return out


# --8<-- [end:mha]


def kv_cache_bytes(
    n_layers: int,
    n_kv_heads: int,
    head_dim: int,
    seq_len: int,
    batch_size: int = 1,
    bytes_per_value: int = 2,
) -> int:
    """Bytes of keys and values a decoder caches for ``seq_len`` positions (K and V; fp16 default)."""
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_value
