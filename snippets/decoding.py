"""From next-token logits to text: temperature, top-k and top-p (nucleus) filtering, generation.

Fan, Lewis, Dauphin, "Hierarchical Neural Story Generation", 2018, arXiv:1805.04833 (top-k);
Holtzman, Buys, Du, Forbes, Choi, "The Curious Case of Neural Text Degeneration", 2019,
arXiv:1904.09751 (nucleus, or top-p, sampling).
"""

from __future__ import annotations

import torch

from snippets.gpt import GPT


# --8<-- [start:filters]
def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest logits of each row (and any tied with the k-th); set the rest to -inf.

    logits (..., V) -> (..., V). The softmax of the result renormalises the survivors.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    k = min(k, logits.size(-1))
    kth_largest = logits.topk(k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))  # (..., V)


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most probable tokens whose probability reaches p (the
    nucleus of Holtzman et al.), and any token tied with its least probable member; never fewer
    than one. Set the rest to -inf.

    logits (..., V) -> (..., V). Top-p is top-k with a k chosen per row by the distribution itself.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    sorted_logits = logits.sort(dim=-1, descending=True).values  # (..., V)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # (..., V) mass of the r+1 likeliest
    # Tokens ranked before the running total reaches p, plus the one that reaches it.
    k = (cumulative < p).sum(dim=-1, keepdim=True) + 1  # (..., 1)
    kth_largest = sorted_logits.gather(-1, k.clamp(max=logits.size(-1)) - 1)  # (..., 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))  # (..., V)


# --8<-- [end:filters]


# --8<-- [start:sample]
def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw the next token from logits (B, V) -> ids (B,). Temperature 0 is greedy decoding.

    The order is that of transformers: temperature, then top-k, then top-p, then sampling.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)  # (B,) the limit of softmax(z / T) as T -> 0
    logits = logits / temperature  # softmax(z / T): T < 1 sharpens, T > 1 flattens
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(dim=-1)  # (B, V), zero outside the kept set
    if generator is not None:  # a CPU generator draws on the CPU, wherever the model runs
        probs = probs.to(generator.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)  # (B,)


# --8<-- [end:sample]


# --8<-- [start:generate]
@torch.no_grad()
def generate(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    return_logits: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Extend the prompts idx (B, L) one token per step, up to ``max_new_tokens`` tokens.

    A row that emits ``eos_id`` keeps emitting it (as padding) until every row has; then generation
    stops. With ``use_cache`` each step feeds the model only the newest token and reads the keys and
    values of the earlier ones from the cache; without it each step re-reads the whole sequence.
    Returns the ids (B, L + n) and, with ``return_logits``, each step's next-token logits (B, n, V).
    """
    if idx.size(1) + max_new_tokens > model.cfg.block_size:
        raise ValueError(
            f"{idx.size(1)} prompt tokens + {max_new_tokens} new ones exceed "
            f"block_size={model.cfg.block_size}"
        )
    cache = model.new_cache() if use_cache else None
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)  # (B,)
    unseen = idx  # the tokens the cache does not hold yet: the prompt, then one per step
    step_logits = []
    for _ in range(max_new_tokens):
        logits = model(unseen, cache) if use_cache else model(idx)  # (B, L_in, V)
        logits = logits[:, -1]  # (B, V) the next-token distribution
        step_logits.append(logits)
        next_id = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
        if eos_id is not None:
            next_id = next_id.masked_fill(finished, eos_id)
            finished |= next_id == eos_id
        idx = torch.cat([idx, next_id[:, None]], dim=1)  # (B, L + 1): append, then repeat
        unseen = next_id[:, None]  # (B, 1)
        if finished.all():
            break
    if return_logits:
        return idx, torch.stack(step_logits, dim=1)  # (B, L + n), (B, n, V)
    return idx


# --8<-- [end:generate]
