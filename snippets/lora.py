"""LoRA: low-rank adaptation of a frozen linear layer.

Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", 2021, arXiv:2106.09685. A frozen
weight W0 (d_out, d_in) gets a trainable update B A of rank r (B: d_out x r, A: r x d_in), scaled
by alpha / r; B starts at zero, so training starts from exactly the base model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn


# --8<-- [start:lora]
class LoRALinear(nn.Module):
    """``base(x) + (alpha / r) * lora_B(lora_A(dropout(x)))`` with ``base`` frozen.

    h = W0 x + (alpha / r) B A x: Eq. 3 of Hu et al. with the alpha / r scaling of their
    Section 4.1. A is random, B is zero (their Figure 1), so at initialisation the layer computes
    exactly what ``base`` does. A gets ``nn.Linear``'s default (Kaiming-uniform) init, as in peft;
    the paper draws A from a Gaussian.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if r < 1:
            raise ValueError(f"rank r must be positive, got {r}")
        self.base = base.requires_grad_(False)  # W0 (and its bias) stay frozen
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Linear(base.in_features, r, bias=False, **kw)  # A: d_in -> r
        self.lora_B = nn.Linear(r, base.out_features, bias=False, **kw)  # B: r -> d_out
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.scaling = alpha / r
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = self.lora_B(
            self.lora_A(self.dropout(x))
        )  # (..., d_in) -> (..., r) -> (..., d_out)
        return self.base(x) + self.scaling * update  # (..., d_out)

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """A plain ``nn.Linear`` with W = W0 + (alpha / r) B A: same outputs (without dropout),
        no extra cost at inference (Section 4.1 of Hu et al.)."""
        base = self.base
        merged = nn.Linear(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        delta = self.lora_B.weight @ self.lora_A.weight  # (d_out, r) @ (r, d_in) -> (d_out, d_in)
        merged.weight.copy_(base.weight + self.scaling * delta)
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        return merged


# --8<-- [end:lora]


# --8<-- [start:add-lora]
def add_lora(
    model: nn.Module,
    targets: Iterable[str],
    r: int,
    alpha: float,
    dropout: float = 0.0,
    keep_trainable: Iterable[str] = (),
) -> list[str]:
    """Freeze every parameter of ``model``, then wrap each ``nn.Linear`` whose name ends with one
    of ``targets`` (e.g. ``"q_proj"``) in a ``LoRALinear``, in place. Parameters named in
    ``keep_trainable`` (e.g. new embedding rows) stay trainable. Returns the wrapped layers' names.
    """
    targets, keep = tuple(targets), set(keep_trainable)
    for name, param in model.named_parameters():
        param.requires_grad_(name in keep)
    chosen = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.split(".")[-1] in targets
    ]
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout))
    return chosen


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` of ``model`` by its merged ``nn.Linear``, in place."""
    wrapped = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name in wrapped:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, getattr(parent, child).merge())
    return model


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) numbers of parameters, each shared tensor counted once."""
    params = list(model.parameters())  # nn.Module.parameters() already skips repeats
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# --8<-- [end:add-lora]
