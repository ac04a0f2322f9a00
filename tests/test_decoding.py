"""Decoding: our filters against transformers' logits warpers, our generate against its generate."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

pytest.importorskip("transformers", reason="the cross-checks compare with transformers' warpers")
from reference_models import tiny_gpt2_pair
from transformers import TopKLogitsWarper, TopPLogitsWarper

from snippets.decoding import generate, sample_next, top_k_filter, top_p_filter

NEG_INF = float("-inf")


@st.composite
def logits_batches(draw: st.DrawFn, allow_ties: bool = True) -> torch.Tensor:
    """(B, V) float32 logits; with ``allow_ties`` some are rounded to integers, so values tie."""
    batch, vocab = draw(st.integers(1, 4)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, vocab, generator=gen) * draw(st.sampled_from([0.1, 1.0, 5.0]))
    if allow_ties and draw(st.booleans()):
        logits = logits.round()  # many equal values
    return logits


def boundary_gap(logits: torch.Tensor, p: float) -> float:
    """How far p is from every cumulative probability of the sorted rows (float64)."""
    probs = logits.double().softmax(-1).sort(dim=-1, descending=True).values
    return (probs.cumsum(-1) - p).abs().min().item()


@settings(max_examples=100, deadline=None)
@given(logits=logits_batches(), k=st.integers(1, 50))
def test_top_k_equals_transformers(logits: torch.Tensor, k: int) -> None:
    # Both keep every logit tied with the k-th largest, so ties give the same set.
    expected = TopKLogitsWarper(top_k=k)(None, logits)
    torch.testing.assert_close(top_k_filter(logits, k), expected, rtol=0, atol=0)


@settings(max_examples=100, deadline=None)
@given(logits=logits_batches(allow_ties=False), p=st.floats(0.0, 1.0, exclude_max=True))
def test_top_p_equals_transformers_without_ties(logits: torch.Tensor, p: float) -> None:
    # Where a cumulative sum lands on p itself, float32 rounding decides; both sides may differ.
    assume(boundary_gap(logits, p) > 1e-5)
    assume(logits.flatten().unique().numel() == logits.numel())
    expected = TopPLogitsWarper(top_p=p)(None, logits)
    torch.testing.assert_close(top_p_filter(logits, p), expected, rtol=0, atol=0)


@settings(max_examples=100, deadline=None)
@given(logits=logits_batches(), p=st.floats(0.0, 1.0, exclude_max=True))
def test_top_p_with_ties_keeps_transformers_set_and_ties(logits: torch.Tensor, p: float) -> None:
    """transformers breaks a tie at the nucleus' edge by sort order; we keep every tied token."""
    assume(boundary_gap(logits, p) > 1e-5)
    ours = top_p_filter(logits, p) > NEG_INF  # (B, V) kept
    theirs = TopPLogitsWarper(top_p=p)(None, logits) > NEG_INF
    assert (ours | ~theirs).all()  # theirs is a subset of ours
    # Every extra token ties with the least likely token transformers kept.
    edge = logits.masked_fill(~theirs, float("inf")).min(dim=-1, keepdim=True).values  # (B, 1)
    assert (logits[ours & ~theirs] == edge.expand_as(logits)[ours & ~theirs]).all()


@settings(max_examples=60, deadline=None)
@given(logits=logits_batches(), p=st.floats(0.0, 1.0))
def test_top_p_keeps_smallest_set_reaching_p(logits: torch.Tensor, p: float) -> None:
    assume(boundary_gap(logits, p) > 1e-5)
    kept = top_p_filter(logits, p) > NEG_INF  # (B, V)
    probs = logits.double().softmax(-1)
    assert (kept.sum(-1) >= 1).all()
    for row_probs, row_kept in zip(probs, kept, strict=True):
        mass = row_probs[row_kept].sum()
        least = row_probs[row_kept].min()
        assert mass >= p or row_kept.all()
        # Dropping the least likely kept tokens (a tie group) falls short of p, unless they are all
        # that is kept: at least one token always survives.
        above = row_kept & (row_probs > least)
        assert not above.any() or row_probs[above].sum() < p


def test_filters_renormalise_the_survivors() -> None:
    logits = torch.randn(3, 20, generator=torch.Generator().manual_seed(0))
    probs = logits.softmax(-1)
    for filtered in (top_k_filter(logits, 5), top_p_filter(logits, 0.7)):
        kept = filtered > NEG_INF
        renormalised = torch.where(kept, probs, 0.0) / (probs * kept).sum(-1, keepdim=True)
        torch.testing.assert_close(filtered.softmax(-1), renormalised)


def test_top_p_one_keeps_the_whole_distribution() -> None:
    """p is in [0, 1], both ends included: p = 1 asks for all of the probability mass."""
    logits = torch.randn(4, 30, generator=torch.Generator().manual_seed(1))
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_filter_argument_checks() -> None:
    with pytest.raises(ValueError):
        top_k_filter(torch.zeros(1, 3), 0)
    with pytest.raises(ValueError):
        top_p_filter(torch.zeros(1, 3), 1.5)
    with pytest.raises(ValueError):
        sample_next(torch.zeros(1, 3), temperature=-1.0)


def test_temperature_zero_and_top_k_one_are_greedy() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 30, generator=gen)
    greedy = logits.argmax(-1)
    assert torch.equal(sample_next(logits, temperature=0.0), greedy)
    assert torch.equal(sample_next(logits, top_k=1, generator=gen), greedy)
    assert torch.equal(sample_next(logits, top_p=0.0, generator=gen), greedy)


def test_sampling_follows_the_filtered_distribution() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])
    draws = sample_next(logits.expand(20000, -1), temperature=0.7, top_k=3, generator=gen)
    freq = torch.bincount(draws, minlength=5).double() / draws.numel()
    expected = top_k_filter(logits / 0.7, 3).double().softmax(-1)[0]
    # 20000 draws: the standard error of each frequency is below 0.004.
    torch.testing.assert_close(freq, expected, rtol=0, atol=0.02)


@pytest.mark.parametrize("batch", [1, 3])
def test_greedy_generate_matches_transformers(batch: int) -> None:
    hf, ours = tiny_gpt2_pair()
    prompt = torch.randint(1, 61, (batch, 5), generator=torch.Generator().manual_seed(batch))
    expected = hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=20,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=0,
    )
    for use_cache in (True, False):
        got = generate(ours, prompt, 20, temperature=0.0, use_cache=use_cache)
        assert torch.equal(got, expected)


def test_greedy_generate_stops_at_eos_like_transformers() -> None:
    hf, ours = tiny_gpt2_pair()
    prompt = torch.randint(1, 61, (3, 4), generator=torch.Generator().manual_seed(7))
    free = generate(ours, prompt, 12, temperature=0.0)
    eos = int(free[0, 4 + 3])  # the first row emits this token at its fourth step
    expected = hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=eos,  # finished rows are padded with eos, as ours are
    )
    got = generate(ours, prompt, 12, temperature=0.0, eos_id=eos)
    assert torch.equal(got, expected)
    first_eos = int((free[0, 4:] == eos).nonzero()[0])  # step at which row 0 first emits eos
    assert (got[0, 4 + first_eos :] == eos).all()
    # A single row stops right after its end token.
    alone = generate(ours, prompt[:1], 12, temperature=0.0, eos_id=eos)
    assert torch.equal(alone, free[:1, : 4 + first_eos + 1])


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, None, None), (0.8, 10, 0.9)])
def test_sampled_generate_matches_transformers(
    temperature: float, top_k: int | None, top_p: float | None
) -> None:
    """Same warpers in the same order, same draws from the global RNG: the same tokens."""
    hf, ours = tiny_gpt2_pair()
    prompt = torch.randint(1, 61, (2, 3), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(123)
    expected = hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=15,
        do_sample=True,
        temperature=temperature,
        top_k=top_k or 0,
        top_p=top_p or 1.0,
        eos_token_id=None,
        pad_token_id=0,
    )
    torch.manual_seed(123)
    got = generate(ours, prompt, 15, temperature=temperature, top_k=top_k, top_p=top_p)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 1.2, "top_p": 0.9}])
def test_cache_changes_nothing_but_the_cost(sampling: dict) -> None:
    _, ours = tiny_gpt2_pair(seed=2)
    prompt = torch.randint(0, 61, (2, 6), generator=torch.Generator().manual_seed(0))
    runs = {}
    for use_cache in (True, False):
        gen = torch.Generator().manual_seed(5)
        runs[use_cache] = generate(
            ours, prompt, 26, use_cache=use_cache, generator=gen, return_logits=True, **sampling
        )
    (ids_c, logits_c), (ids_n, logits_n) = runs[True], runs[False]
    assert torch.equal(ids_c, ids_n)
    assert logits_c.shape == (2, 26, 61)
    torch.testing.assert_close(logits_c, logits_n, rtol=1e-5, atol=1e-5)


def test_generate_refuses_to_run_past_block_size() -> None:
    _, ours = tiny_gpt2_pair()
    prompt = torch.zeros(1, 30, dtype=torch.long)
    assert generate(ours, prompt, 2, temperature=0.0).shape == (1, 32)
    for use_cache in (True, False):
        with pytest.raises(ValueError, match="block_size"):
            generate(ours, prompt, 3, temperature=0.0, use_cache=use_cache)


def test_top_p_stops_at_a_nucleus_that_reaches_p_exactly() -> None:
    """The nucleus is the smallest set whose mass reaches p: when the r likeliest tokens hold
    exactly p, they are the nucleus, without the next one. p is set to the float32 running total
    itself, the one boundary the hypothesis tests above step around."""
    logits = torch.tensor([[2.0, -1.0, 0.5, 1.0, 0.0]])
    order = logits[0].argsort(descending=True)
    cumulative = logits.sort(dim=-1, descending=True).values.softmax(-1).cumsum(-1)[0]
    for r in range(1, 5):
        p = cumulative[r - 1].item()  # the mass of the r likeliest tokens, exactly
        kept = (top_p_filter(logits, p) > NEG_INF)[0]
        assert kept.sum() == r
        assert kept[order[:r]].all()


def test_rows_ending_at_different_steps_are_padded_with_eos_like_transformers() -> None:
    """A row that has emitted the end token emits it again, not its own continuation, while the
    other rows go on; transformers pads finished rows the same way."""
    hf, ours = tiny_gpt2_pair(init_std=0.5)  # peaked logits: greedy rows change token often
    prompt = torch.randint(1, 61, (3, 4), generator=torch.Generator().manual_seed(7))
    free = generate(ours, prompt, 12, temperature=0.0)[:, 4:]  # (3, 12) without an end token
    eos = 11
    # The premise, so that the padding is visible: row 0 first emits 11 at step 3, row 2 at
    # step 2, row 1 never; left alone, row 0 would go on with another token.
    first = [int((row == eos).nonzero()[0]) if (row == eos).any() else None for row in free]
    assert first == [2, None, 1]
    assert free[0, 3] != eos
    expected = hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    for use_cache in (True, False):
        got = generate(ours, prompt, 12, temperature=0.0, eos_id=eos, use_cache=use_cache)
        assert torch.equal(got, expected)
        assert (got[0, 4 + 2 :] == eos).all() and (got[2, 4 + 1 :] == eos).all()
        assert torch.equal(got[1, 4:], free[1])  # the unfinished row is unaffected


def test_filters_work_row_by_row_on_any_leading_dims() -> None:
    """logits (..., V): a (2, 3, V) batch is filtered as its six rows are, one at a time."""
    logits = torch.randn(2, 3, 17, generator=torch.Generator().manual_seed(4))
    for filtered, one_row in (
        (top_k_filter(logits, 4), lambda row: top_k_filter(row, 4)),
        (top_p_filter(logits, 0.6), lambda row: top_p_filter(row, 0.6)),
    ):
        rows = torch.stack([one_row(row[None])[0] for row in logits.view(-1, 17)])
        assert torch.equal(filtered, rows.view(2, 3, 17))
        assert ((filtered > NEG_INF).sum(-1) < 17).all()  # every row lost tokens


def test_generate_defaults_are_plain_sampling_with_the_cache() -> None:
    """Without options generate samples from softmax(logits) (temperature 1, no filter), as
    transformers' do_sample=True does, and feeds the model one new token per step."""
    hf, ours = tiny_gpt2_pair(init_std=0.5)  # peaked: another temperature draws other tokens
    prompt = torch.randint(1, 61, (2, 3), generator=torch.Generator().manual_seed(3))
    torch.manual_seed(123)
    expected = hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=15,
        do_sample=True,
        top_k=0,
        eos_token_id=None,
        pad_token_id=0,
    )
    fed = []  # the shape of the ids the model reads at each step
    hook = ours.wte.register_forward_hook(lambda mod, args, out: fed.append(tuple(args[0].shape)))
    torch.manual_seed(123)
    got = generate(ours, prompt, 15)
    hook.remove()
    assert torch.equal(got, expected)
    assert fed == [(2, 3)] + [(2, 1)] * 14
    logits = torch.randn(1000, 4, generator=torch.Generator().manual_seed(0)) * 3
    default, plain, hotter = (
        sample_next(logits, *temperature, generator=torch.Generator().manual_seed(1))
        for temperature in ((), (1.0,), (1.5,))
    )
    assert torch.equal(default, plain) and not torch.equal(default, hotter)
