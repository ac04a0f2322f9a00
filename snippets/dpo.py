"""Distilled SFT and distilled DPO, the two training steps of Zephyr.

Tunstall et al., "Zephyr: Direct Distillation of LM Alignment", 2023 (arXiv:2310.16944): supervised
fine-tuning on a teacher's answers (dSFT), then direct preference optimisation (dDPO) on pairs
(x, y_w, y_l) that a judge ranked. The DPO objective is Eq. 7 of Rafailov et al., "Direct
Preference Optimization: Your Language Model is Secretly a Reward Model", 2023 (arXiv:2305.18290).

A sequence is a prompt followed by its response, right-padded: ``input_ids`` (B, L) with a boolean
``response_mask`` (B, L) that is True on the response tokens only. Right padding needs no attention
mask in a causal model: a pad token comes after every real token, so no real position sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


# --8<-- [start:pack]
def pack(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompt + response token lists -> right-padded ``input_ids`` (B, L) and ``response_mask``
    (B, L), True where a token belongs to the response."""
    rows = [list(p) + list(r) for p, r in zip(prompts, responses, strict=True)]
    length = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), length), pad_id, dtype=torch.long)  # (B, L)
    response_mask = torch.zeros(len(rows), length, dtype=torch.bool)  # (B, L)
    for i, (p, row) in enumerate(zip(prompts, rows, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row)
        response_mask[i, len(p) : len(row)] = True
    return input_ids, response_mask


# --8<-- [end:pack]


# --8<-- [start:logprobs]
def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(token t | tokens < t) for t = 1 .. L-1: logits (B, L, V), ids (B, L) -> (B, L-1).

    The logits at position t - 1 predict the token at position t, hence the shift by one.
    """
    logp = logits[:, :-1].log_softmax(dim=-1)  # (B, L-1, V)
    return logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, L-1)


def sequence_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """log pi(y | x) = sum of the response tokens' log-probabilities -> (B,).

    Prompt and padding tokens are excluded: the policy is scored on what it writes, given the prompt.
    """
    per_token = token_logprobs(logits, input_ids)  # (B, L-1)
    return (per_token * response_mask[:, 1:]).sum(dim=-1)  # (B,)


# --8<-- [end:logprobs]


# --8<-- [start:sft]
def sft_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor
) -> torch.Tensor:
    """dSFT: mean negative log-likelihood of the response tokens only (a scalar).

    Section 3 of Tunstall et al.: pi_dSFT = argmax_pi E_(x, y) log pi(y | x); the prompt is given,
    so its tokens are not targets.
    """
    per_token = token_logprobs(logits, input_ids)  # (B, L-1)
    mask = response_mask[:, 1:]  # (B, L-1): which targets are response tokens
    return -(per_token * mask).sum() / mask.sum()


# --8<-- [end:sft]


# --8<-- [start:dpo-loss]
def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-example DPO losses and implicit rewards; every input is (B,) sequence log-probabilities.

    Eq. 7 of Rafailov et al.: loss = -log sigmoid(beta * [log pi/pi_ref (y_w) - log pi/pi_ref (y_l)]).
    The implicit reward of a response is r(x, y) = beta * log pi(y|x) / pi_ref(y|x) (their Section 5);
    the rewards are returned detached, for monitoring, as in the paper's reference code.
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,) log pi/pi_ref of y_w
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,) same for y_l
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))  # (B,)
    chosen_rewards = beta * chosen_logratios.detach()  # (B,)
    rejected_rewards = beta * rejected_logratios.detach()  # (B,)
    return losses, chosen_rewards, rejected_rewards


# --8<-- [end:dpo-loss]


# --8<-- [start:pairs]
@dataclass(frozen=True)
class PreferencePair:
    """One line of a feedback dataset: a prompt x, the preferred y_w and the rejected y_l."""

    prompt: tuple[int, ...]
    chosen: tuple[int, ...]
    rejected: tuple[int, ...]
    chosen_score: float
    rejected_score: float


def binarize(
    prompt: Sequence[int],
    responses: Sequence[Sequence[int]],
    ratings: Sequence[Sequence[float]],
    generator: torch.Generator | None = None,
) -> PreferencePair | None:
    """UltraFeedback -> DPO pair, as Zephyr does: y_w is the response with the highest mean rating,
    y_l one of the responses rated strictly lower, drawn uniformly at random.

    ``ratings[j]`` holds the judge's scores of response j on each aspect. None when every response
    has the same mean (no preference to learn from).
    """
    means = [sum(r) / len(r) for r in ratings]
    best = max(range(len(responses)), key=means.__getitem__)  # the first of any tied best
    lower = [j for j in range(len(responses)) if means[j] < means[best]]
    if not lower:
        return None
    # y_l: uniformly among the lower-rated responses, not the worst one.
    worse = lower[int(torch.randint(len(lower), (1,), generator=generator))]
    return PreferencePair(
        tuple(prompt), tuple(responses[best]), tuple(responses[worse]), means[best], means[worse]
    )


# --8<-- [end:pairs]
