"""Beam search: against transformers' beam search and greedy decoding, exhaustive search on small
hand-made distributions, and with and without the key/value cache."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from snippets.beam_search import (
    GPTNextLogProbs,
    beam_search,
    gnmt_length_penalty,
    length_divisor,
)
from snippets.decoding import generate
from snippets.gpt import GPT, GPTConfig

transformers = pytest.importorskip("transformers", reason="the cross-checks need transformers")
import reference_models  # noqa: E402
from tolerances import FLOAT32

V, EOS, PROMPT_LEN, MAX_NEW = 61, 5, 4, 10
# Float32 scores: ours and transformers' sum the same log-probabilities in the same order, but our
# GPT and GPT-2 compute the logits in different orders (1e-5, see test_gpt.py).


class RenormalisedEosBias(transformers.LogitsProcessor):
    """Adds ``bias`` to the end token's score and renormalises: beams end earlier for bias > 0.

    transformers applies it to log-probabilities in beam search and to logits in greedy search;
    log_softmax gives the same result from either.
    """

    def __init__(self, bias: float) -> None:
        self.bias = bias

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.clone()
        scores[:, EOS] += self.bias
        return scores.log_softmax(dim=-1)


def tiny_gpt2_pair(seed: int) -> tuple[transformers.GPT2LMHeadModel, GPT]:
    """A random GPT-2 with peaked next-token distributions and our GPT with its weights."""
    return reference_models.tiny_gpt2_pair(seed, vocab_size=V, d_model=32, eos_id=EOS, init_std=0.3)


def random_prompt(seed: int) -> torch.Tensor:
    return torch.randint(0, V, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(seed))


def with_processor(scorer: GPTNextLogProbs, processor: RenormalisedEosBias) -> Callable:
    """``scorer`` followed by ``processor``, keeping the scorer's cache reordering."""

    def next_log_probs(ids: torch.Tensor) -> torch.Tensor:
        return processor(ids, scorer(ids))

    next_log_probs.reorder_cache = scorer.reorder_cache
    return next_log_probs


def strip(row: list[int]) -> list[int]:
    """A transformers output row cut after the prompt's first generated end token (then padding)."""
    generated = row[PROMPT_LEN:]
    return row[: PROMPT_LEN + (generated.index(EOS) + 1 if EOS in generated else len(generated))]


def transformers_beams(
    hf: transformers.GPT2LMHeadModel,
    prompt: torch.Tensor,
    k: int,
    lp: float,
    processor: RenormalisedEosBias,
) -> list[tuple[list[int], float]]:
    """transformers' k best hypotheses and scores; for k = 1 (greedy decoding, which has no
    sequences_scores) the score is the summed log-probabilities over generated_len ** lp."""
    kwargs = dict(
        attention_mask=torch.ones_like(prompt),
        do_sample=False,
        max_new_tokens=MAX_NEW,
        logits_processor=transformers.LogitsProcessorList([processor]),
        output_scores=True,
        return_dict_in_generate=True,
        eos_token_id=EOS,
        pad_token_id=EOS,
    )
    if k == 1:
        out = hf.generate(prompt, **kwargs)
        tokens = strip(out.sequences[0].tolist())
        steps = range(len(tokens) - PROMPT_LEN)
        total = sum(out.scores[t][0, tokens[PROMPT_LEN + t]] for t in steps)
        return [(tokens, (total / len(steps) ** lp).item())]
    out = hf.generate(
        prompt,
        num_beams=k,
        num_return_sequences=k,
        length_penalty=lp,
        early_stopping=True,
        **kwargs,
    )
    return [
        (strip(row), score)
        for row, score in zip(out.sequences.tolist(), out.sequences_scores.tolist(), strict=True)
    ]


def assert_same_hypotheses(ours: list, theirs: list) -> None:
    assert [tokens for tokens, _ in ours] == [tokens for tokens, _ in theirs]
    torch.testing.assert_close(
        torch.tensor([s for _, s in ours]), torch.tensor([s for _, s in theirs]), **FLOAT32
    )


# --- against transformers --------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("eos_bias", [0.0, 4.0])
def test_matches_transformers_generate(seed: int, eos_bias: float) -> None:
    """Every hypothesis and score of generate(num_beams=k, length_penalty=lp, early_stopping=True),
    k in {1, 2, 4}, lp in {0, 1, 2}; our GPT with its key/value cache scores the beams."""
    hf, ours = tiny_gpt2_pair(seed)
    prompt, processor = random_prompt(seed), RenormalisedEosBias(eos_bias)
    for k, lp in itertools.product([1, 2, 4], [0.0, 1.0, 2.0]):
        scorer = with_processor(GPTNextLogProbs(ours), processor)
        found = beam_search(scorer, prompt[0], k, MAX_NEW, EOS, length_penalty=lp)
        assert_same_hypotheses(found, transformers_beams(hf, prompt, k, lp, processor))


def test_matches_transformers_with_its_own_model_as_scorer() -> None:
    """The same with transformers' GPT-2 itself as next_log_probs (no cache on our side)."""
    hf, _ = tiny_gpt2_pair(3)
    prompt, processor = random_prompt(3), RenormalisedEosBias(4.0)

    def next_log_probs(ids: torch.Tensor) -> torch.Tensor:
        return processor(ids, hf(ids).logits[:, -1].float().log_softmax(dim=-1))

    for k, lp in [(2, 1.0), (4, 0.0), (4, 2.0)]:
        with torch.no_grad():
            found = beam_search(next_log_probs, prompt[0], k, MAX_NEW, EOS, length_penalty=lp)
        assert_same_hypotheses(found, transformers_beams(hf, prompt, k, lp, processor))


def test_cross_check_covers_early_and_late_ends() -> None:
    """The grid above meets the three ways a search can end: no hypothesis, some, or all k of them
    ending at the end token before max_new_tokens (the others are cut there)."""
    cases = {"none": (0, 0.0, 4, 1.0), "some": (0, 4.0, 4, 1.0), "all": (2, 4.0, 4, 2.0)}
    for kind, (seed, eos_bias, k, lp) in cases.items():
        _, ours = tiny_gpt2_pair(seed)
        scorer = with_processor(GPTNextLogProbs(ours), RenormalisedEosBias(eos_bias))
        found = beam_search(scorer, random_prompt(seed)[0], k, MAX_NEW, EOS, lp)
        early = sum(len(tokens) < PROMPT_LEN + MAX_NEW for tokens, _ in found)
        assert kind == ("all" if early == k else "none" if early == 0 else "some")


# --- greedy, cache, one call per step --------------------------------------------------------


@pytest.mark.parametrize("lp", [0.0, 1.0, 2.0])
def test_beam_size_one_is_greedy_decoding(lp: float) -> None:
    """Beam size 1 returns exactly snippets.decoding.generate's greedy tokens (the transformers
    cross-check above covers greedy runs that end at the end token)."""
    for seed in [0, 1, 2]:
        _, ours = tiny_gpt2_pair(seed)
        prompt = random_prompt(seed)
        [(tokens, score)] = beam_search(GPTNextLogProbs(ours), prompt[0], 1, MAX_NEW, EOS, lp)
        greedy, logits = generate(
            ours, prompt, MAX_NEW, temperature=0.0, eos_id=EOS, return_logits=True
        )
        assert tokens == greedy[0].tolist()
        generated = greedy[0, PROMPT_LEN:]  # (n,)
        total = logits[0].log_softmax(dim=-1).gather(1, generated[:, None]).sum()
        torch.testing.assert_close(score, (total / len(generated) ** lp).item(), **FLOAT32)


@pytest.mark.parametrize(("k", "lp", "eos_bias"), [(1, 1.0, 0.0), (3, 0.0, 4.0), (4, 2.0, 4.0)])
def test_cached_equals_uncached(k: int, lp: float, eos_bias: float) -> None:
    _, ours = tiny_gpt2_pair(4)
    processor = RenormalisedEosBias(eos_bias)
    results = [
        beam_search(
            with_processor(GPTNextLogProbs(ours, use_cache=cached), processor),
            random_prompt(4)[0],
            k,
            MAX_NEW,
            EOS,
            lp,
        )
        for cached in (True, False)
    ]
    assert_same_hypotheses(*results)


def test_one_batched_call_per_step_and_one_new_position_per_beam() -> None:
    _, ours = tiny_gpt2_pair(5)
    scorer = GPTNextLogProbs(ours)
    calls, fed = [], []  # ids each call received; token positions the model actually read
    hook = ours.wte.register_forward_hook(lambda mod, args, out: fed.append(tuple(args[0].shape)))

    def counting(ids: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(ids.shape))
        return scorer(ids)

    counting.reorder_cache = scorer.reorder_cache
    found = beam_search(counting, random_prompt(5)[0], 4, MAX_NEW, EOS, 1.0)
    hook.remove()
    steps = max(len(tokens) for tokens, _ in found) - PROMPT_LEN
    assert steps == MAX_NEW  # without a bias every beam runs to the end here
    # Step 1 scores the prompt (one row), every later step all 4 live beams in one call.
    assert calls == [(1, PROMPT_LEN)] + [(4, PROMPT_LEN + t) for t in range(1, len(calls))]
    assert len(calls) == steps
    # With the cache the model reads the prompt once, then one new token per beam and step.
    assert fed == [(1, PROMPT_LEN)] + [(4, 1)] * (len(calls) - 1)


# --- hand-made distributions -----------------------------------------------------------------


def tree_model(seed: int, vocab: int, sharpness: float) -> Callable:
    """A fixed random next-token distribution for every prefix (the same prefix, the same one)."""

    def next_log_probs(ids: torch.Tensor) -> torch.Tensor:
        rows = []
        for row in ids.tolist():
            gen = torch.Generator().manual_seed(hash((seed, *row)) % 2**63)
            rows.append(torch.randn(vocab, generator=gen) * sharpness)  # (vocab,) logits
        return torch.stack(rows).log_softmax(dim=-1)  # (B, vocab)

    return next_log_probs


def exhaustive_best(
    next_log_probs: Callable, prompt: list[int], max_new: int, eos: int, penalty: object
) -> tuple[list[int], float]:
    """The best-scoring hypothesis among all of them: every sequence that ends at ``eos`` within
    ``max_new`` tokens, and every one cut at ``max_new``; scored as beam_search scores them."""
    best: tuple[list[int], float] | None = None
    frontier = [(prompt, torch.zeros(()))]  # unfinished prefixes and their summed log-probability
    for step in range(1, max_new + 1):
        grown = []
        for seq, total in frontier:
            log_probs = next_log_probs(torch.tensor([seq]))[0]  # (V,)
            for token, lp in enumerate(log_probs):
                if token == eos or step == max_new:
                    score = ((total + lp) / length_divisor(step, penalty)).item()
                    if best is None or score > best[1]:
                        best = (seq + [token], score)
                else:
                    grown.append((seq + [token], total + lp))
        frontier = grown
    return best


penalties = st.one_of(
    st.sampled_from([0.0, 0.5, 1.0, 2.0]),
    st.sampled_from([0.0, 0.6, 1.0]).map(gnmt_length_penalty),
)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    vocab=st.integers(2, 4),
    max_new=st.integers(1, 3),
    sharpness=st.sampled_from([0.5, 2.0, 5.0]),
    penalty=penalties,
)
def test_a_beam_that_holds_every_hypothesis_is_exhaustive_search(
    seed: int, vocab: int, max_new: int, sharpness: float, penalty: object
) -> None:
    model = tree_model(seed, vocab, sharpness)
    found = beam_search(model, [vocab], vocab**max_new, max_new, 0, penalty)  # prompt: one token
    tokens, score = exhaustive_best(model, [vocab], max_new, 0, penalty)
    assert found[0][0] == tokens
    assert found[0][1] == pytest.approx(score, rel=1e-6)
    assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)  # best first


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    vocab=st.integers(2, 6),
    max_new=st.integers(1, 6),
    sharpness=st.sampled_from([0.5, 2.0, 5.0]),
    lp=st.sampled_from([0.0, 1.0, 2.0]),
)
def test_beam_size_one_is_greedy_on_any_distribution(
    seed: int, vocab: int, max_new: int, sharpness: float, lp: float
) -> None:
    model = tree_model(seed, vocab, sharpness)
    seq, total = [vocab], 0.0
    for _ in range(max_new):  # greedy: append the likeliest token until the end token
        log_probs = model(torch.tensor([seq]))[0]
        seq.append(int(log_probs.argmax()))
        total += log_probs[seq[-1]]
        if seq[-1] == 0:
            break
    [(tokens, score)] = beam_search(model, [vocab], 1, max_new, 0, lp)
    assert tokens == seq
    assert score == pytest.approx((total / (len(seq) - 1) ** lp).item(), rel=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    vocab=st.integers(2, 4),
    max_new=st.integers(1, 3),
    k=st.integers(1, 8),
    sharpness=st.sampled_from([0.5, 2.0, 5.0]),
)
def test_unnormalised_scores_are_summed_log_probabilities(
    seed: int, vocab: int, max_new: int, k: int, sharpness: float
) -> None:
    """With length_penalty 0 each score is log p(generated tokens | prompt) <= 0, recomputed here
    token by token; a hypothesis shorter than max_new_tokens ends at the end token."""
    model = tree_model(seed, vocab, sharpness)
    for tokens, score in beam_search(model, [vocab], k, max_new, 0, length_penalty=0.0):
        generated = tokens[1:]
        assert 1 <= len(generated) <= max_new
        assert generated[-1] == 0 or len(generated) == max_new
        assert 0 not in generated[:-1]
        log_p = sum(
            model(torch.tensor([tokens[: i + 1]]))[0, tokens[i + 1]] for i in range(len(generated))
        )
        assert score == pytest.approx(float(log_p), rel=1e-6, abs=1e-6)
        assert score <= 0.0


def table_model(table: dict[tuple[int, ...], dict[int, float]], vocab: int) -> Callable:
    """next_log_probs from explicit probabilities per prefix (prompt excluded); other tokens
    share what is left, and prefixes not in the table get a uniform distribution."""

    def next_log_probs(ids: torch.Tensor) -> torch.Tensor:
        rows = []
        for row in ids.tolist():
            given_probs = table.get(tuple(row[1:]), {})
            rest = (1.0 - sum(given_probs.values())) / (vocab - len(given_probs))
            rows.append([given_probs.get(t, rest) for t in range(vocab)])
        return torch.tensor(rows, dtype=torch.float64).log().float()  # (B, vocab)

    return next_log_probs


def test_a_wider_beam_can_return_a_less_probable_hypothesis_than_greedy() -> None:
    """Beam search is not monotone in the beam size. Greedy takes A (0.5), then A's likeliest
    continuation x (0.2), then ends (0.99): p = 0.099. Beam 2 keeps A and B, then B's two strong
    continuations (0.4 x 0.5, 0.4 x 0.45) push A x out; after them every token has probability
    1/8, so whatever it returns has p <= 0.4 x 0.5 / 8 = 0.025."""
    eos, A, B, x, y = 0, 1, 2, 3, 4
    model = table_model(
        {
            (): {A: 0.5, B: 0.4},
            (A,): {x: 0.2, y: 0.19},
            (A, x): {eos: 0.99},
            (B,): {x: 0.5, y: 0.45},
        },
        vocab=8,
    )
    [(greedy, greedy_logp)] = beam_search(model, [7], 1, 6, eos, length_penalty=0.0)
    assert greedy == [7, A, x, eos]
    assert greedy_logp == pytest.approx(torch.tensor([0.5 * 0.2 * 0.99]).log().item(), rel=1e-6)
    best, best_logp = beam_search(model, [7], 2, 6, eos, length_penalty=0.0)[0]
    assert best[1] == B and best_logp < greedy_logp


# --- the penalties, the defaults and the scorer's contract -----------------------------------


def test_gnmt_length_penalty_is_wu_et_al_section_7() -> None:
    """lp(Y) = (5 + |Y|)^alpha / (5 + 1)^alpha, written out here: 1 for a one-token hypothesis,
    growing with the length for alpha > 0."""
    for alpha in (0.0, 0.6, 1.0, 2.0):
        lp = gnmt_length_penalty(alpha)
        assert lp(1) == pytest.approx(1.0, rel=1e-12)
        for length in (2, 7, 30):
            assert lp(length) == pytest.approx(((5 + length) / 6) ** alpha, rel=1e-12)
    assert gnmt_length_penalty(0.6)(10) == pytest.approx(2.5**0.6, rel=1e-12)  # (15 / 6)^0.6


def test_default_length_penalty_is_transformers_one() -> None:
    """transformers' default length_penalty is 1.0 (mean log-probability per token), and so is
    ours; on this model the choice shows in the scores (0.0 gives other ones)."""
    model = tree_model(3, 4, 2.0)
    default = beam_search(model, [4], 3, 4, 0)
    assert default == beam_search(model, [4], 3, 4, 0, length_penalty=1.0)
    assert [s for _, s in default] != [s for _, s in beam_search(model, [4], 3, 4, 0, 0.0)]


def test_the_scorer_always_receives_long_ids() -> None:
    """Token ids reach ``next_log_probs`` as int64, as torch models expect, whether the prompt
    is a list or a tensor of another integer type (a tokenizer may give int32)."""
    seen = []

    def uniform(ids: torch.Tensor) -> torch.Tensor:
        seen.append(ids.dtype)
        return torch.zeros(len(ids), 3).log_softmax(dim=-1)  # (B, 3)

    for prompt in ([2, 1], torch.tensor([2, 1], dtype=torch.int32)):
        beam_search(uniform, prompt, 2, 3, 0)
    assert seen and set(seen) == {torch.long}


def test_cache_reuse_with_a_one_layer_model() -> None:
    """GPTNextLogProbs reads how many positions its cache holds from the first layer's cache,
    which a one-layer model also has: cached and uncached search agree there too."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=V, block_size=32, n_layers=1, n_heads=2, d_model=16)).eval()
    prompt = random_prompt(0)[0]
    cached = beam_search(GPTNextLogProbs(model), prompt, 3, MAX_NEW, EOS)
    uncached = beam_search(GPTNextLogProbs(model, use_cache=False), prompt, 3, MAX_NEW, EOS)
    assert_same_hypotheses(cached, uncached)
