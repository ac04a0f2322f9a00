"""Grouped-query and multi-query attention: what they share, what they save, how to convert to them.

Shazeer, "Fast Transformer Decoding: One Write-Head is All You Need", 2019, arXiv:1911.02150 (MQA);
Ainslie et al., "GQA: Training Generalized Multi-Query Transformer Models from Multi-Head
Checkpoints", 2023, arXiv:2305.13245 (GQA, mean-pooling conversion, uptraining);
Touvron et al., "Llama 2: Open Foundation and Fine-Tuned Chat Models", 2023, arXiv:2307.09288.

The attention itself is ``snippets.attention.MultiHeadAttention(d_model, n_heads, n_kv_heads)``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import torch

from snippets.attention import MultiHeadAttention, kv_cache_bytes
from snippets.gpt import GPT


def kv_head_of(query_head: int, n_heads: int, n_kv_heads: int) -> int:
    """The key/value head that query head ``query_head`` reads: i // (h / g) (Ainslie et al.)."""
    return query_head // (n_heads // n_kv_heads)


# --8<-- [start:params]
def attention_params(
    d_model: int, n_heads: int, n_kv_heads: int | None = None, bias: bool = True
) -> int:
    """Parameters of one attention layer with ``n_kv_heads`` key/value heads (None = MHA).

    W^Q and W^O are d_model x d_model whatever the variant; W^K and W^V shrink to
    d_model x (n_kv_heads * head_dim). Weights: 2 d^2 + 2 d g d_head (4 d^2 for MHA).
    """
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    kv_dim = n_kv_heads * (d_model // n_heads)  # width of W^K and of W^V
    weights = 2 * d_model * d_model + 2 * d_model * kv_dim  # W^Q, W^O + W^K, W^V
    biases = 2 * d_model + 2 * kv_dim if bias else 0
    return weights + biases


# --8<-- [end:params]


# --8<-- [start:decode-bytes]
def decode_step_bytes(
    d_model: int,
    n_heads: int,
    n_kv_heads: int | None,
    context_len: int,
    batch_size: int = 1,
    bytes_per_value: int = 4,
) -> int:
    """The least memory one attention layer must read to decode one token for each sequence.

    Every weight once (shared by the batch), plus every cached key and value of every sequence
    (Shazeer 2019: the cache term is what makes incremental MHA memory-bound).
    """
    n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
    weights = attention_params(d_model, n_heads, n_kv_heads, bias=False) * bytes_per_value
    cache = kv_cache_bytes(
        1, n_kv_heads, d_model // n_heads, context_len, batch_size, bytes_per_value
    )
    return weights + cache


# --8<-- [end:decode-bytes]


@torch.no_grad()
def kv_sharing(attn: MultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """Which query heads read which key/value head, found by experiment rather than by formula.

    Perturb the projections of key/value head j and record which query heads' outputs (the inputs
    of W^O) change. Returns bool (n_heads, n_kv_heads), True where head i changed with K/V head j.
    """
    H, Hkv, hd = attn.n_heads, attn.n_kv_heads, attn.head_dim
    B, L, _ = x.shape

    def head_outputs(module: MultiHeadAttention) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        hook = module.o_proj.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
        module(x)
        hook.remove()
        return seen[0].view(B, L, H, hd)  # (B, L, H, hd): head i's output before W^O

    base = head_outputs(attn)
    reads = torch.zeros(H, Hkv, dtype=torch.bool, device=x.device)
    for j in range(Hkv):
        probe = copy.deepcopy(attn)
        rows = slice(j * hd, (j + 1) * hd)  # head-major: K/V head j is features [j*hd, (j+1)*hd)
        probe.k_proj.weight[rows] += torch.randn_like(probe.k_proj.weight[rows])
        probe.v_proj.weight[rows] += torch.randn_like(probe.v_proj.weight[rows])
        changed = (head_outputs(probe) - base).abs().amax(dim=(0, 1, 3))  # (H,)
        reads[:, j] = changed > 1e-6
    return reads.cpu()


# --8<-- [start:convert]
def group_means(rows: torch.Tensor, n_groups: int, head_dim: int) -> torch.Tensor:
    """The mean head of each group of a K or V projection: weight (H*hd, d) or bias (H*hd,).

    Heads are head-major in the rows, and group j holds heads j*G .. j*G + G-1.
    """
    heads = rows.view(n_groups, -1, head_dim, *rows.shape[1:])  # (g, G, hd, ...)
    return heads.mean(dim=1).reshape(n_groups * head_dim, *rows.shape[1:])  # (g*hd, ...)


@torch.no_grad()
def mean_pool_kv_heads(attn: MultiHeadAttention, n_kv_heads: int) -> MultiHeadAttention:
    """Convert an attention layer to ``n_kv_heads`` key/value heads (Ainslie et al., Section 2.1).

    Each new K (and V) head is the mean of the heads of its group, weights and biases;
    W^Q and W^O are copied unchanged. n_kv_heads = n_heads returns an equal copy; 1 gives MQA.
    """
    if attn.n_kv_heads % n_kv_heads:
        raise ValueError(f"{attn.n_kv_heads} key/value heads cannot be pooled into {n_kv_heads}")
    gqa = MultiHeadAttention(
        attn.q_proj.in_features,
        attn.n_heads,
        n_kv_heads,
        bias=attn.q_proj.bias is not None,
        dropout=attn.dropout.p,
    ).to(attn.q_proj.weight)  # same device and dtype
    gqa.q_proj.load_state_dict(attn.q_proj.state_dict())
    gqa.o_proj.load_state_dict(attn.o_proj.state_dict())
    for new, old in ((gqa.k_proj, attn.k_proj), (gqa.v_proj, attn.v_proj)):
        new.weight.copy_(group_means(old.weight, n_kv_heads, attn.head_dim))  # NEW: W^K_j, W^V_j
        if old.bias is not None:
            new.bias.copy_(group_means(old.bias, n_kv_heads, attn.head_dim))
    return gqa


def convert_gpt_to_gqa(model: GPT, n_kv_heads: int) -> GPT:
    """A copy of ``model`` with every attention layer mean-pooled to ``n_kv_heads`` K/V heads."""
    converted = copy.deepcopy(model)
    converted.cfg = replace(model.cfg, n_kv_heads=n_kv_heads)
    for block in converted.blocks:
        block.attn = mean_pool_kv_heads(block.attn, n_kv_heads)
    return converted


# --8<-- [end:convert]


@dataclass(frozen=True)
class AttentionShape:
    """The attention shape of a published decoder, as far as the KV cache is concerned."""

    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


# Published configurations (config.json of meta-llama/Llama-2-{7b,13b,70b}-hf; Touvron et al. 2023,
# Table 1: only the 34B and 70B models use GQA, and the 34B model was not released).
LLAMA2 = {
    "7B": AttentionShape(n_layers=32, d_model=4096, n_heads=32, n_kv_heads=32),
    "13B": AttentionShape(n_layers=40, d_model=5120, n_heads=40, n_kv_heads=40),
    "70B": AttentionShape(n_layers=80, d_model=8192, n_heads=64, n_kv_heads=8),
}
