"""Beam search over a language model's next-token distributions, with length normalisation.

The scoring and stopping rules are those of transformers' ``generate(num_beams=k,
early_stopping=True)`` (transformers 5, ``GenerationMixin._beam_search``); the GNMT length penalty
is from Wu et al., "Google's Neural Machine Translation System: Bridging the Gap between Human and
Machine Translation", 2016, arXiv:1609.08144 (Section 7).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from snippets.attention import KVCache
from snippets.gpt import GPT

NextLogProbs = Callable[[torch.Tensor], torch.Tensor]  # ids (B, L) -> log-probabilities (B, V)
LengthPenalty = float | Callable[[int], float]


# --8<-- [start:penalties]
def length_divisor(length: int, length_penalty: LengthPenalty) -> float:
    """What a finished hypothesis's summed log-probability is divided by.

    A number p gives ``length ** p`` as in transformers (0: raw sums, 1: mean log-probability per
    token); a callable, such as ``gnmt_length_penalty(alpha)``, maps the length to the divisor.
    ``length`` counts generated tokens only, the end token included, never the prompt.
    """
    if callable(length_penalty):
        return length_penalty(length)
    return length**length_penalty


def gnmt_length_penalty(alpha: float) -> Callable[[int], float]:
    """GNMT's lp(Y) = (5 + |Y|)^alpha / (5 + 1)^alpha (Section 7 of Wu et al. 2016)."""
    return lambda length: (5 + length) ** alpha / 6**alpha


# --8<-- [end:penalties]


# --8<-- [start:beam-search]
@torch.no_grad()
def beam_search(
    next_log_probs: NextLogProbs,
    prompt: torch.Tensor | Sequence[int],
    beam_size: int,
    max_new_tokens: int,
    eos_id: int,
    length_penalty: LengthPenalty = 1.0,
) -> list[tuple[list[int], float]]:
    """The best hypotheses after ``prompt``, best first: (prompt + generated tokens, score).

    A hypothesis's running score is the sum of its tokens' log-probabilities (<= 0; the highest
    sums are kept). One that ends (``eos_id``, or ``max_new_tokens`` reached) is set aside with
    score = sum / length_divisor(generated length, ``length_penalty``). Stops, as transformers with
    ``early_stopping=True``, once ``beam_size`` hypotheses have ended. If ``next_log_probs`` has a
    ``reorder_cache(parents)`` method, it is called after each step with the index of the row each
    surviving beam extends, so a key/value cache can follow its beams.
    """
    beams = torch.as_tensor(prompt, dtype=torch.long, device="cpu")[None]  # (1, L): the prompt
    sums = torch.zeros(1)  # (B,) summed log-probability of each live beam's generated tokens
    finished: list[tuple[list[int], float]] = []  # at most beam_size, best first
    reorder_cache = getattr(next_log_probs, "reorder_cache", None)
    for step in range(1, max_new_tokens + 1):
        log_probs = next_log_probs(beams).float().cpu()  # (B, V): every live beam in one call
        V = log_probs.size(1)
        totals = (sums[:, None] + log_probs).flatten()  # (B*V,) the score of every extension
        # Rank all B*V extensions and keep the 2k best (impossible ones, -inf, never): with one end
        # token at most k of them end, so k go on however many end.
        n = min(2 * beam_size, int(totals.isfinite().sum()))
        top, index = totals.topk(n)  # (n,), (n,) best first
        parent, token = index // V, index % V  # (n,) the beam each extends, and its new token
        ends = (token == eos_id) | (step == max_new_tokens)  # (n,)
        # As in transformers, only the k best extensions may end here; an end token ranked lower
        # is dropped, not kept for later.
        for rank in range(min(beam_size, n)):
            if ends[rank]:
                tokens = beams[parent[rank]].tolist() + [token[rank].item()]
                score = (top[rank] / length_divisor(step, length_penalty)).item()
                finished.append((tokens, score))
        finished = sorted(finished, key=lambda h: h[1], reverse=True)[:beam_size]
        going = (~ends).nonzero().squeeze(1)[:beam_size]  # (k,) ranks of the k best that go on
        if len(finished) == beam_size or len(going) == 0:
            break
        beams = torch.cat([beams[parent[going]], token[going, None]], dim=1)  # (k, L + 1)
        sums = top[going]  # (k,)
        if reorder_cache is not None:
            reorder_cache(parent[going])
    return finished


# --8<-- [end:beam-search]


# --8<-- [start:gpt-scorer]
class GPTNextLogProbs:
    """``next_log_probs`` for our GPT (snippets.gpt), reusing its key/value cache across steps.

    Each call feeds the model only the positions its cache does not hold yet; ``reorder_cache``
    makes row i of every layer's cache a copy of row ``parents[i]``, so each surviving beam keeps
    the keys and values of its own prefix. With ``use_cache=False`` every call re-reads all ids.
    """

    def __init__(self, model: GPT, use_cache: bool = True) -> None:
        self.model = model
        self.cache = model.new_cache() if use_cache else None

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.to(self.model.wte.weight.device)
        if self.cache is None:
            logits = self.model(ids)  # (B, L, V)
        else:
            logits = self.model(ids[:, len(self.cache[0]) :], self.cache)  # (B, L_new, V)
        return logits[:, -1].log_softmax(dim=-1)  # (B, V)

    def reorder_cache(self, parents: torch.Tensor) -> None:
        if self.cache is None:
            return
        parents = parents.to(self.model.wte.weight.device)
        for i, layer in enumerate(self.cache):
            # KVCache has no reorder of its own: rebuild it from the gathered rows.
            self.cache[i] = KVCache()
            self.cache[i].append(
                layer.k.index_select(0, parents),  # (k, Hkv, L, hd)
                layer.v.index_select(0, parents),
            )


# --8<-- [end:gpt-scorer]
