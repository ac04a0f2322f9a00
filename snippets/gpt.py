"""A GPT-2-style decoder-only language model with a key/value cache.

Radford et al., "Language Models are Unsupervised Multitask Learners", 2019 (GPT-2): pre-LN blocks,
learned positions, output layer tied to the token embedding. ``n_kv_heads`` turns MHA into GQA/MQA.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from snippets.attention import KVCache, MultiHeadAttention, causal_mask


@dataclass
class GPTConfig:
    """Sizes of a GPT; the defaults are GPT-2 small (124M parameters)."""

    vocab_size: int = 50257
    block_size: int = 1024  # longest sequence, = number of learned positions
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None  # None: MHA; 1: MQA; else GQA
    d_model: int = 768
    dropout: float = 0.0
    bias: bool = True


class MLP(nn.Module):
    """Position-wise feed-forward network: d_model -> 4 d_model -> d_model."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2 uses the tanh approximation of GELU.
        return self.dropout(self.proj(F.gelu(self.fc(x), approximate="tanh")))  # (B, L, d_model)


# --8<-- [start:block]
class Block(nn.Module):
    """Pre-LN decoder block: x + Attn(LN(x)), then x + MLP(LN(x)). No cross-attention."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = MultiHeadAttention(
            cfg.d_model, cfg.n_heads, cfg.n_kv_heads, bias=cfg.bias, dropout=cfg.dropout
        )
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None = None
    ) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.ln_1(x), mask=mask, cache=cache))  # (B, L, d_model)
        return x + self.mlp(self.ln_2(x))


# --8<-- [end:block]


class GPT(nn.Module):
    """Token + learned position embeddings, ``n_layers`` decoder blocks, final LayerNorm, and an
    output layer that shares the token embedding's weights."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)  # token embedding
        self.wpe = nn.Embedding(cfg.block_size, cfg.d_model)  # learned positions
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def new_cache(self) -> list[KVCache]:
        """One empty key/value cache per layer, for incremental decoding."""
        return [KVCache() for _ in self.blocks]

    # --8<-- [start:forward]
    def forward(self, idx: torch.Tensor, cache: list[KVCache] | None = None) -> torch.Tensor:
        """idx (B, L) token ids -> logits (B, L, vocab_size).

        With ``cache``, idx holds only the new tokens; earlier positions come from the cache.
        """
        B, L = idx.shape
        past = 0 if cache is None else len(cache[0])
        if past + L > self.cfg.block_size:
            raise ValueError(
                f"sequence of {past + L} tokens exceeds block_size={self.cfg.block_size}"
            )
        pos = torch.arange(past, past + L, device=idx.device)  # (L,) absolute positions
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, L, d_model)
        # New query t (absolute position past + t) sees keys 0..past + t: the last L mask rows.
        # A single new token may see every cached key, so it needs no mask.
        mask = causal_mask(past + L, device=idx.device)[past:] if L > 1 else None  # (L, past + L)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, None if cache is None else cache[i])
        return self.lm_head(self.ln_f(x))  # (B, L, vocab_size)

    # --8<-- [end:forward]


# --8<-- [start:from-gpt2]
def from_gpt2_state_dict(state: dict[str, torch.Tensor], cfg: GPTConfig) -> GPT:
    """Our GPT holding the weights of a transformers ``GPT2LMHeadModel`` state dict.

    GPT-2 stores its linear layers as ``Conv1D``: weight (in, out) and y = x W + b, the transpose
    of ``nn.Linear``'s (out, in). Its ``c_attn`` packs the query, key and value projections side by
    side.
    """
    if cfg.n_kv_heads not in (None, cfg.n_heads) or not cfg.bias:
        raise ValueError("GPT-2 has multi-head attention with biases: n_kv_heads=None, bias=True")
    d = cfg.d_model
    sd = {name.removeprefix("transformer."): w for name, w in state.items()}
    ours = {
        "wte.weight": sd["wte.weight"],
        "wpe.weight": sd["wpe.weight"],
        "lm_head.weight": sd["wte.weight"],  # tied
        "ln_f.weight": sd["ln_f.weight"],
        "ln_f.bias": sd["ln_f.bias"],
    }
    for i in range(cfg.n_layers):
        theirs, mine = f"h.{i}.", f"blocks.{i}."
        w_q, w_k, w_v = sd[theirs + "attn.c_attn.weight"].split(d, dim=1)  # 3 x (d, d), (in, out)
        b_q, b_k, b_v = sd[theirs + "attn.c_attn.bias"].split(d)  # 3 x (d,)
        for name, w, b in (("q_proj", w_q, b_q), ("k_proj", w_k, b_k), ("v_proj", w_v, b_v)):
            ours[mine + f"attn.{name}.weight"] = w.t()  # (out, in)
            ours[mine + f"attn.{name}.bias"] = b
        for theirs_name, mine_name in (
            ("attn.c_proj", "attn.o_proj"),
            ("mlp.c_fc", "mlp.fc"),
            ("mlp.c_proj", "mlp.proj"),
        ):
            ours[mine + mine_name + ".weight"] = sd[theirs + theirs_name + ".weight"].t()
            ours[mine + mine_name + ".bias"] = sd[theirs + theirs_name + ".bias"]
        for ln in ("ln_1", "ln_2"):
            ours[mine + ln + ".weight"] = sd[theirs + ln + ".weight"]
            ours[mine + ln + ".bias"] = sd[theirs + ln + ".bias"]
    model = GPT(cfg)
    model.load_state_dict(ours)
    return model


# --8<-- [end:from-gpt2]
