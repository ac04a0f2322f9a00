"""``make bench``: every speed claim of the site measured side by side on one machine, and the page
that shows the results.

    python -m vrn_site.bench [--device cpu|cuda] [--out build/bench.json] [--quick] [--skip-build]

Each case first asserts that its two contenders compute the same result, then times them in
alternation (A, B, A, B, ...) after a warm-up round and reports a ratio of their medians: load from
other processes falls on both, so the ratio holds still where the seconds do not. The budgets (site
build, notebooks, test command) are timed once or read from the last runs' records. ``render``
turns the results into the Markdown of docs/bench.md, ``published_values`` into the numbers the
notes quote.

torch, transformers and matplotlib are imported inside the functions that use them: the site build
imports this module for ``render`` and should not pay seconds for torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import html
import io
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vrn_site import project_root

if TYPE_CHECKING:
    import torch
    import transformers
    from matplotlib.figure import Figure

    from snippets.attention import KVCache
    from snippets.gpt import GPT

Clock = Callable[[], float]


class OutputsDiffer(AssertionError):
    """Two contenders of a case disagree: timing them would compare different work."""


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class Timer:
    """Times callables in turn, round after round, after ``warmup`` untimed rounds."""

    rounds: int
    warmup: int = 1
    clock: Clock = time.perf_counter
    sync: Callable[[], None] = lambda: None  # torch.cuda.synchronize on a GPU: wait for the kernels

    def __call__(self, fns: Sequence[Callable[[], object]]) -> list[list[float]]:
        """Seconds of each of ``fns`` in each round (A, B, A, B, ...): one list per callable."""
        for _ in range(self.warmup):
            for fn in fns:
                fn()
        seconds: list[list[float]] = [[] for _ in fns]
        for _ in range(self.rounds):
            for fn, times in zip(fns, seconds, strict=True):
                self.sync()
                start = self.clock()
                fn()
                self.sync()
                times.append(self.clock() - start)
        return seconds


def check_same(case: str, what: str, a: object, b: object) -> None:
    """Raise OutputsDiffer, naming the case, unless ``a == b``."""
    if a != b:
        raise OutputsDiffer(
            f"{case}: the {what} differ, so timing them would compare different work:\n"
            f"  {a!r}\n  {b!r}"
        )


def check_close(case: str, what: str, a: object, b: object, tol: float) -> None:
    """Raise OutputsDiffer, naming the case, unless ``a`` and ``b`` (tensors or lists of floats)
    are equal within ``tol`` (absolute and relative)."""
    import torch

    try:
        torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=tol, atol=tol)
    except AssertionError as err:
        raise OutputsDiffer(f"{case}: the {what} differ by more than {tol:g}:\n{err}") from None


@dataclass
class Case:
    """One speed claim: a baseline and a candidate that compute the same thing, timed in turn."""

    id: str
    title: str
    baseline: str
    candidate: str
    baseline_median_s: float
    candidate_median_s: float
    ratio: float  # oriented so that ``target`` reads naturally (a speed-up: baseline / candidate)
    target: str
    target_value: float
    met: bool
    note: str
    rounds: int
    informative: bool = False  # shown for understanding; no claim of the site rests on it
    series: dict[str, list[float]] | None = None  # per-size numbers, for the figures


def speed_up_case(
    id: str,
    title: str,
    baseline: tuple[str, list[float]],
    candidate: tuple[str, list[float]],
    at_least: float,
    note: str,
) -> Case:
    """A case whose target is a speed-up: baseline median / candidate median >= ``at_least``."""
    ratio = statistics.median(baseline[1]) / statistics.median(candidate[1])
    return _case(id, title, baseline, candidate, ratio, f"≥ {at_least:g}x faster", at_least, note)


def ours_vs_transformers_case(
    id: str,
    title: str,
    baseline: tuple[str, list[float]],
    ours: tuple[str, list[float]],
    note: str,
) -> Case:
    """A case whose target is ours at least as fast: our median / transformers' median <= 1.
    ``note`` may use ``{ratio}``."""
    ratio = statistics.median(ours[1]) / statistics.median(baseline[1])
    note = note.format(ratio=f"{ratio:.2f}")
    return _case(id, title, baseline, ours, ratio, "ours/theirs ≤ 1", 1.0, note, at_most=True)


def _case(
    id: str,
    title: str,
    baseline: tuple[str, list[float]],
    candidate: tuple[str, list[float]],
    ratio: float,
    target: str,
    target_value: float,
    note: str,
    at_most: bool = False,
) -> Case:
    """The Case of two timed series (name, seconds per round); ``ratio`` already oriented."""
    return Case(
        id=id,
        title=title,
        baseline=baseline[0],
        candidate=candidate[0],
        baseline_median_s=statistics.median(baseline[1]),
        candidate_median_s=statistics.median(candidate[1]),
        ratio=ratio,
        target=target,
        target_value=target_value,
        met=ratio <= target_value if at_most else ratio >= target_value,
        note=note,
        rounds=len(candidate[1]),
    )


@dataclass(frozen=True)
class Sizes:
    """How big each case is. ``QUICK`` shrinks everything: a smoke test, not a measurement."""

    rounds: int  # timed rounds per case, after one warm-up round
    kv_new_tokens: int
    greedy_new_tokens: int
    beam_new_tokens: int
    beam_size: int  # beam-vs-transformers
    batched_beam_size: int  # batched-beam: more beams, more calls saved
    decode_d_model: int  # 32 query heads of d_model / 32 dimensions each
    decode_contexts: tuple[int, ...]
    copy_mib: int
    sdpa_lengths: tuple[int, ...]


FULL = Sizes(
    rounds=15,
    kv_new_tokens=256,
    greedy_new_tokens=96,
    beam_new_tokens=32,
    beam_size=4,
    batched_beam_size=8,
    decode_d_model=4096,
    decode_contexts=(1024, 2048, 4096, 8192),
    copy_mib=256,
    sdpa_lengths=(512, 1024),
)
QUICK = dataclasses.replace(
    FULL,
    rounds=3,
    kv_new_tokens=24,
    greedy_new_tokens=12,
    beam_new_tokens=8,
    decode_d_model=512,
    decode_contexts=(128, 256),
    copy_mib=8,
    sdpa_lengths=(64, 128),
)


# --- the cases ---------------------------------------------------------------------------------


def kv_cache_case(device: str, sizes: Sizes, timer: Timer) -> Case:
    """Greedy generation with and without the key/value cache (snippets.decoding.generate)."""
    import torch

    from snippets.decoding import generate
    from snippets.gpt import GPT, GPTConfig

    n_new, prompt_len = sizes.kv_new_tokens, 16
    torch.manual_seed(0)
    # The GPT note's timing model, random weights; positions for the prompt and every new token.
    cfg = GPTConfig(64, block_size=prompt_len + n_new, n_layers=2, n_heads=4, d_model=128)
    model = GPT(cfg).to(device).eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, prompt_len)).to(device)  # (1, 16)

    def run(use_cache: bool) -> Callable[[], torch.Tensor]:
        return lambda: generate(model, prompt, n_new, temperature=0.0, use_cache=use_cache)

    with_cache, without = run(True), run(False)
    check_same("kv-cache", "generated tokens", with_cache().tolist(), without().tolist())
    t_with, t_without = timer([with_cache, without])
    case = speed_up_case(
        "kv-cache",
        f"Greedy generation of {n_new} tokens, tiny GPT (2 layers, d_model 128)",
        ("without the KV cache", t_without),
        ("with the KV cache", t_with),
        5.0,
        f"{1e3 * statistics.median(t_with) / n_new:.2f} ms per token with the cache, "
        f"{1e3 * statistics.median(t_without) / n_new:.2f} ms without; the same {n_new} tokens.",
    )
    if not case.met:
        case.note += (
            " Missed: at this size a cached step costs mostly fixed overhead (Python and the "
            "dispatch of about a hundred small tensor operations per token), which the cache "
            "does not remove."
        )
    return case


def gpt2_pair(seed: int = 0) -> tuple[transformers.GPT2LMHeadModel, GPT]:
    """A random tiny GPT-2 (transformers) and our GPT holding the same weights.

    Built as the cross-check tests build theirs (tests/reference_models.py): ``init_std`` 0.3, far
    above GPT-2's 0.02, peaks the next-token distributions, so that float rounding (ours and theirs
    add in different orders, 1e-5 apart) cannot swap two near-equal tokens. No end token in the
    config: a case that needs one passes it to ``generate``.
    """
    import torch
    import transformers

    from snippets.gpt import GPTConfig, from_gpt2_state_dict

    torch.manual_seed(seed)
    hf_cfg = transformers.GPT2Config(
        vocab_size=96,
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        initializer_range=0.3,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    cfg = GPTConfig(vocab_size=96, block_size=128, n_layers=2, n_heads=4, d_model=64)
    return hf, from_gpt2_state_dict(hf.state_dict(), cfg).eval()


def greedy_case(device: str, sizes: Sizes, timer: Timer) -> Case:
    """snippets.decoding.generate (temperature 0) against transformers' generate(do_sample=False)."""
    import torch

    from snippets.decoding import generate

    hf, ours = (m.to(device) for m in gpt2_pair())
    n_new = sizes.greedy_new_tokens
    prompt = torch.randint(0, 96, (1, 8), generator=torch.Generator().manual_seed(1)).to(device)

    def mine() -> torch.Tensor:
        return generate(ours, prompt, n_new, temperature=0.0)  # (1, 8 + n_new)

    def theirs() -> torch.Tensor:
        mask = torch.ones_like(prompt)
        return hf.generate(prompt, attention_mask=mask, do_sample=False, max_new_tokens=n_new)

    check_same("greedy-vs-transformers", "generated tokens", mine().tolist(), theirs().tolist())
    t_ours, t_theirs = timer([mine, theirs])
    return ours_vs_transformers_case(
        "greedy-vs-transformers",
        f"Greedy generation of {n_new} tokens, tiny GPT-2, the same weights",
        ("transformers generate(do_sample=False)", t_theirs),
        ("our generate(temperature=0)", t_ours),
        f"The same {n_new} tokens; both reuse a key/value cache. Ours takes {{ratio}} of "
        "transformers' time: its generate also resolves a generation config, logits "
        "processors and stopping criteria on every call and step, which ours does not have.",
    )


def hypotheses(case: str, found: list, rows: list[list[int]], prompt_len: int, eos: int) -> list:
    """transformers' beam output rows cut after their first generated end token (the rest is
    padding), so they compare with ``found``; raises OutputsDiffer if the lists differ in length."""
    cut = []
    for row in rows:
        generated = row[prompt_len:]
        end = generated.index(eos) + 1 if eos in generated else len(generated)
        cut.append(row[: prompt_len + end])
    check_same(case, "numbers of hypotheses", len(found), len(cut))
    return cut


def beam_case(device: str, sizes: Sizes, timer: Timer) -> Case:
    """snippets.beam_search with GPTNextLogProbs against transformers' generate(num_beams=k)."""
    import torch

    from snippets.beam_search import GPTNextLogProbs, beam_search

    hf, ours = (m.to(device) for m in gpt2_pair())
    k, n_new, eos, lp = sizes.beam_size, sizes.beam_new_tokens, 0, 1.0
    prompt = torch.randint(1, 96, (1, 8), generator=torch.Generator().manual_seed(2)).to(device)

    def mine() -> list[tuple[list[int], float]]:
        return beam_search(GPTNextLogProbs(ours), prompt[0], k, n_new, eos, length_penalty=lp)

    def theirs() -> Any:  # transformers' GenerateBeamDecoderOnlyOutput
        # The conventions of tests/test_beam_search.py: early stopping, the end token pads.
        return hf.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            num_beams=k,
            num_return_sequences=k,
            max_new_tokens=n_new,
            length_penalty=lp,
            early_stopping=True,
            eos_token_id=eos,
            pad_token_id=eos,
            output_scores=True,  # sequences_scores needs it; ours returns scores too
            return_dict_in_generate=True,
        )

    found, out = mine(), theirs()
    rows = hypotheses("beam-vs-transformers", found, out.sequences.tolist(), prompt.size(1), eos)
    check_same("beam-vs-transformers", "hypotheses", [t for t, _ in found], rows)
    scores = ([s for _, s in found], out.sequences_scores.tolist())
    check_close("beam-vs-transformers", "hypothesis scores", *scores, tol=1e-5)
    ended = sum(len(t) < prompt.size(1) + n_new for t, _ in found)
    t_ours, t_theirs = timer([mine, theirs])
    return ours_vs_transformers_case(
        "beam-vs-transformers",
        f"Beam search, beam of {k}, up to {n_new} tokens, tiny GPT-2, the same weights",
        (f"transformers generate(num_beams={k})", t_theirs),
        ("our beam_search + GPTNextLogProbs", t_ours),
        f"The same {k} hypotheses ({ended} ended at the end token) and scores within 1e-5, "
        f"length_penalty {lp:g}, early stopping. Ours takes {{ratio}} of transformers' time.",
    )


def cache_copy(layer: KVCache) -> KVCache:
    """A new cache holding a copy of ``layer``'s keys and values."""
    from snippets.attention import KVCache

    copy = KVCache()
    copy.append(layer.k, layer.v)  # append copies into a buffer of its own
    return copy


class PerHypothesisNextLogProbs:
    """The baseline of ``batched-beam``: GPTNextLogProbs's work in one model call per live beam
    instead of one per step, each beam with a key/value cache of its own."""

    def __init__(self, model: GPT) -> None:
        self.model = model
        self.caches = [model.new_cache()]  # one list of layer caches per live beam

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        import torch

        ids = ids.to(self.model.wte.weight.device)  # (B, L)
        rows = [
            self.model(row[None, len(cache[0]) :], cache)[:, -1]  # (1, V): new positions only
            for row, cache in zip(ids, self.caches, strict=True)
        ]
        return torch.cat(rows).log_softmax(dim=-1)  # (B, V)

    def reorder_cache(self, parents: torch.Tensor) -> None:
        self.caches = [[cache_copy(layer) for layer in self.caches[p]] for p in parents.tolist()]


def batched_beam_case(device: str, sizes: Sizes, timer: Timer) -> Case:
    """Our beam search scoring all live beams in one call per step, against one call per beam."""
    import torch

    from snippets.beam_search import GPTNextLogProbs, beam_search

    _, model = gpt2_pair()
    model.to(device)
    k, n_new, eos = sizes.batched_beam_size, sizes.beam_new_tokens, 0
    prompt = torch.randint(1, 96, (8,), generator=torch.Generator().manual_seed(3))

    def run(scorer: Callable[[GPT], Callable]) -> Callable[[], list]:
        return lambda: beam_search(scorer(model), prompt, k, n_new, eos, length_penalty=1.0)

    batched, per_beam = run(GPTNextLogProbs), run(PerHypothesisNextLogProbs)
    a, b = batched(), per_beam()
    check_same("batched-beam", "hypotheses", [t for t, _ in a], [t for t, _ in b])
    check_close("batched-beam", "scores", [s for _, s in a], [s for _, s in b], tol=1e-5)
    t_batched, t_per_beam = timer([batched, per_beam])
    return speed_up_case(
        "batched-beam",
        f"Beam search, beam of {k}, up to {n_new} tokens: all beams in one model call per step",
        ("one call per beam and step", t_per_beam),
        ("one call per step (GPTNextLogProbs)", t_batched),
        3.0,
        f"Both use per-beam key/value caches and return the same {k} hypotheses; the batched "
        f"scorer makes 1 model call per step instead of up to {k}.",
    )


def rewind(cache: KVCache, length: int) -> None:
    """Forget the positions after ``length``: the next append writes over them, so every timed
    step of a decode case reads the same context."""
    cache.k, cache.v = cache.k[:, :, :length], cache.v[:, :, :length]  # (B, Hkv, length, hd)


def decode_cases(device: str, sizes: Sizes, timer: Timer) -> list[Case]:
    """One decoding step of an attention layer (32 query heads) with MHA, GQA-8 and MQA against a
    cached context, and a large memory copy that measures what this machine's memory can move.

    The step is snippets.attention.MultiHeadAttention with a KVCache, as in the GQA note; the bound
    on its speed-up is the ratio of bytes it must read (snippets.gqa.decode_step_bytes).
    """
    import torch

    from snippets.attention import KVCache, MultiHeadAttention
    from snippets.gqa import decode_step_bytes

    d, h = sizes.decode_d_model, 32
    variants = {"MHA": 32, "GQA-8": 8, "MQA": 1}
    torch.manual_seed(0)
    layers = {n: MultiHeadAttention(d, h, g, bias=False).to(device) for n, g in variants.items()}
    x_new = torch.randn(1, 1, d).to(device)  # (B, 1, d_model): one new token
    src = torch.ones(sizes.copy_mib * 2**20 // 4, device=device)  # float32
    dst = torch.empty_like(src)
    seconds: dict[tuple[int, str], float] = {}
    nbytes: dict[tuple[int, str], int] = {}
    with torch.no_grad():
        for L in sizes.decode_contexts:
            caches = {}
            for name, layer in layers.items():
                shape = (1, layer.n_kv_heads, L, layer.head_dim)  # (B, Hkv, L, hd)
                caches[name] = KVCache()
                caches[name].append(torch.randn(shape).to(device), torch.randn(shape).to(device))
                held = sum(p.numel() * p.element_size() for p in layer.parameters())
                held += sum(t.numel() * t.element_size() for t in (caches[name].k, caches[name].v))
                nbytes[L, name] = decode_step_bytes(d, h, variants[name], L)
                check_same("gqa-decode", f"bytes held by {name} at {L}", held, nbytes[L, name])

            def step(name: str, L: int = L, caches: dict = caches) -> Callable[[], None]:
                def run() -> None:
                    layers[name](x_new, cache=caches[name])  # (1, 1, d_model)
                    rewind(caches[name], L)

                return run

            fns = [step(name) for name in variants]
            if L == sizes.decode_contexts[-1]:
                fns.append(lambda: dst.copy_(src))  # timed in the same rounds as the steps
            times = timer(fns)
            for name, t in zip(variants, times, strict=False):  # the copy's times come last
                seconds[L, name] = statistics.median(t)
            del caches
    contexts = list(sizes.decode_contexts)
    longest = contexts[-1]
    cases = []

    def moved(name: str) -> str:
        """Bytes a step reads at the longest context, its median time and its rate."""
        mb, ms = nbytes[longest, name] / 1e6, seconds[longest, name] * 1e3
        return f"{name} reads {mb:.0f} MB in {ms:.1f} ms ({mb / ms:.1f} GB/s)"

    for case_id, name in (("gqa-decode", "GQA-8"), ("mqa-decode", "MQA")):
        speed_up = [seconds[L, "MHA"] / seconds[L, name] for L in contexts]
        bound = [nbytes[L, "MHA"] / nbytes[L, name] for L in contexts]
        fraction = speed_up[-1] / bound[-1]
        case = Case(
            id=case_id,
            title=f"One decoding step, {name} against MHA (32 heads of {d // h}), {longest:,} tokens",
            baseline="MHA, 32 K/V heads",
            candidate=f"{name}, {variants[name]} K/V head{'s' * (variants[name] > 1)}",
            baseline_median_s=seconds[longest, "MHA"],
            candidate_median_s=seconds[longest, name],
            ratio=fraction,
            target="≥ 0.5 of the bytes bound",
            target_value=0.5,
            met=fraction >= 0.5,
            note=(
                f"Speed-up {speed_up[-1]:.2f}x; bytes bound {bound[-1]:.2f}x (MHA's bytes over "
                f"{name}'s, weights included: every step reads the projections whole). "
                f"{moved('MHA')}; {moved(name)}."
            ),
            rounds=timer.rounds,
            series={"context": contexts, "speed_up": speed_up, "bound": bound},
        )
        if fraction > 1:
            case.note += f" Above the bound: {name}'s step streams its bytes faster than MHA's."
        if not case.met:
            case.note += (
                f" Missed: {name}'s step runs far below memory speed (fixed per-call overhead and "
                "small matrix products weigh more once the cache shrinks)."
            )
        cases.append(case)
    copy_s = statistics.median(times[len(variants)])  # the last (longest) context's rounds
    copy_rate = 2 * src.numel() * src.element_size() / copy_s  # bytes read + bytes written
    mha_rate = nbytes[longest, "MHA"] / seconds[longest, "MHA"]
    fraction = mha_rate / copy_rate
    cases.append(
        Case(
            id="mha-decode-bandwidth",
            title=f"MHA decoding step at {longest:,} tokens: bytes per second against a memory copy",
            baseline=f"dst.copy_(src), {sizes.copy_mib} MiB",
            candidate="MHA decoding step",
            baseline_median_s=copy_s,
            candidate_median_s=seconds[longest, "MHA"],
            ratio=fraction,
            target="> 0.25 of copy bandwidth",
            target_value=0.25,
            met=fraction > 0.25,
            note=(
                f"The step reads {nbytes[longest, 'MHA'] / 1e6:.0f} MB at {mha_rate / 1e9:.1f} GB/s; "
                f"the copy moves {2 * src.numel() * 4 / 1e6:.0f} MB at {copy_rate / 1e9:.1f} GB/s. "
                "How close to memory speed the step runs, not a claim of the site."
            ),
            rounds=timer.rounds,
            informative=True,
        )
    )
    return cases


def sdpa_case(device: str, sizes: Sizes, timer: Timer) -> Case:
    """Our scaled_dot_product_attention against torch's fused one, causal, B=1, H=8, d=64."""
    import torch
    import torch.nn.functional as F

    from snippets.attention import causal_mask, scaled_dot_product_attention

    torch.manual_seed(0)
    ratios, medians = [], []
    for T in sizes.sdpa_lengths:
        q, k, v = torch.randn(3, 1, 8, T, 64).to(device).unbind(0)  # 3 x (B, H, T, d)
        mask = causal_mask(T, device)  # (T, T), made once, outside the timing

        def ours(q=q, k=k, v=v, mask=mask) -> torch.Tensor:
            return scaled_dot_product_attention(q, k, v, mask)[0]  # (1, 8, T, 64)

        def theirs(q=q, k=k, v=v) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (1, 8, T, 64)

        check_close("sdpa", f"attention outputs at T={T}", ours(), theirs(), tol=1e-4)
        t_ours, t_theirs = timer([ours, theirs])
        medians.append((statistics.median(t_ours), statistics.median(t_theirs)))
        ratios.append(medians[-1][0] / medians[-1][1])
    T = sizes.sdpa_lengths[-1]
    return Case(
        id="sdpa",
        title=f"Causal attention, B=1, 8 heads, d=64, T={T:,}",
        baseline="torch.nn.functional.scaled_dot_product_attention",
        candidate="our scaled_dot_product_attention",
        baseline_median_s=medians[-1][1],
        candidate_median_s=medians[-1][0],
        ratio=ratios[-1],
        target="ours/theirs (informative)",
        target_value=1.0,
        met=ratios[-1] <= 1.0,
        note=(
            "Ours/theirs "
            + ", ".join(
                f"{r:.1f} at T={t:,}" for t, r in zip(sizes.sdpa_lengths, ratios, strict=True)
            )
            + ". Ours is the readable form of Eq. 1: it writes the whole T x T score matrix of "
            f"every head ({8 * T * T * 4 / 2**20:.0f} MiB at T={T:,}, more than the processor's "
            "caches), then scales, masks, softmaxes and multiplies it in separate passes over "
            "memory, and computes the scores above the diagonal only to mask them; torch's fused "
            "kernel (flash attention on CPU) works on blocks that stay in cache and skips the "
            "blocks above the diagonal."
        ),
        rounds=timer.rounds,
        informative=True,
        series={"T": list(sizes.sdpa_lengths), "ratio": ratios},
    )


# --- budgets -----------------------------------------------------------------------------------


def budget(
    id: str,
    title: str,
    measured: float | None,
    limit: float,
    source: str,
    note: str = "",
) -> dict[str, Any]:
    """One time budget: ``measured`` seconds (None: not measured) against ``< limit`` seconds."""
    return {
        "id": id,
        "title": title,
        "measured": None if measured is None else round(measured, 1),
        "unit": "s",
        "target": f"< {limit:g} s",
        "target_value": limit,
        "met": None if measured is None else measured < limit,
        "source": source,
        "note": note,
    }


def site_build_budget(root: Path, skip: bool) -> dict[str, Any]:
    """Time ``mkdocs build --strict`` of the project at ``root`` once, into a throwaway folder."""
    title, source = "Strict site build", "mkdocs build --strict, timed once by this run"
    if skip:
        return budget("site-build", title, None, 20, source, "not measured: --skip-build")
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", out],
            cwd=root,
            env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - start
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        return budget("site-build", title, None, 20, source, f"the build failed: {last}")
    return budget("site-build", title, seconds, 20, source)


def record_budgets(root: Path) -> list[dict[str, Any]]:
    """Each notebook's seconds (build/verification.json, written by ``make unit``) and the full
    test command's (build/test-seconds.json, written by ``make test``): read, never re-run here."""
    verification, tests = root / "build/verification.json", root / "build/test-seconds.json"
    record = json.loads(verification.read_text()) if verification.exists() else {}
    source = f"build/verification.json ({record.get('date', 'no run recorded')})"
    found = [
        budget(f"notebook:{path}", f"Notebook {path}", seconds, 60, source)
        for path, seconds in sorted(record.get("notebook_seconds", {}).items())
    ]
    if not found:
        note = "not measured: run make unit first"
        found = [budget("notebooks", "Each notebook", None, 60, source, note)]
    if tests.exists():
        run = json.loads(tests.read_text())
        source = f"build/test-seconds.json ({run.get('date', 'undated')})"
        found.append(budget("test", "Full test command", run["seconds"], 300, source))
    else:
        note = "not measured: run make test first"
        found.append(
            budget("test", "Full test command", None, 300, "build/test-seconds.json", note)
        )
    return found


# --- running -----------------------------------------------------------------------------------


def machine(device: str, threads: int, quick: bool) -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    # After torch: snippets.runtime pins generic kernels only when it is imported before torch.
    from snippets.runtime import cpu_model

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": threads,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "CPU",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": round(os.getloadavg()[0], 2),  # 1-minute, at the start: other work
        "quick": quick,
    }


def run_benchmark(device: str, sizes: Sizes, threads: int, skip_build: bool) -> dict[str, Any]:
    """Every case, then the budgets; restores torch's thread count afterwards."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    timer = Timer(sizes.rounds, sync=sync)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        info = machine(device, threads, sizes == QUICK)
        cases = []
        for measure in (kv_cache_case, greedy_case, beam_case, batched_beam_case):
            print(f"bench: {measure.__name__} ...", file=sys.stderr, flush=True)
            cases.append(measure(device, sizes, timer))
        print("bench: decode_cases, sdpa_case ...", file=sys.stderr, flush=True)
        cases += decode_cases(device, sizes, timer)
        cases.append(sdpa_case(device, sizes, timer))
    finally:
        torch.set_num_threads(previous)
    print("bench: budgets ...", file=sys.stderr, flush=True)
    root = project_root()
    budgets = [site_build_budget(root, skip_build), *record_budgets(root)]
    return {
        "machine": info,
        "cases": [{k: v for k, v in dataclasses.asdict(c).items() if v is not None} for c in cases],
        "budgets": budgets,
    }


def check_device(device: str) -> None:
    """Raise ValueError with the reason when ``device`` cannot run here."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device cuda, but torch {torch.__version__} sees no CUDA device here "
            "(a CPU build of torch, or no GPU); run with --device cpu"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vrn_site.bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, default=Path("build/bench.json"))
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--skip-build", action="store_true", help="do not time the site build")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: steadier when shared)"
    )
    args = parser.parse_args(argv)
    try:
        check_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    sizes = QUICK if args.quick else FULL
    results = run_benchmark(args.device, sizes, args.threads, args.skip_build)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    for c in results["cases"]:
        print(f"{c['id']:<24} {c['ratio']:>7.2f}  {c['target']:<28} {result_word(c)}")
    for b in results["budgets"]:
        print(f"{b['id']:<40} {b['measured']!s:>7} s  {b['target']:<8} {b['note']}")
    print(f"wrote {args.out}")
    return 0


# --- the page ----------------------------------------------------------------------------------

BADGE_CLASS = {
    "met": "holds",
    "missed": "corrected",
    "info": "unverifiable-here",
}  # verdict colours


def result_word(item: dict[str, Any]) -> str:
    """'met', 'missed', 'info' (an informative case) or 'not measured' (a budget without data)."""
    if item.get("informative"):
        return "info"
    if item["met"] is None:
        return "not measured"
    return "met" if item["met"] else "missed"


def badge(word: str) -> str:
    return (
        f'<span class="verdict verdict-{BADGE_CLASS.get(word, "unverifiable-here")}">{word}</span>'
    )


def fmt_ratio(x: float) -> str:
    """One decimal from 1 up, two below (0.42, not 0.4)."""
    return f"{x:.1f}" if x >= 1 else f"{x:.2f}"


def fmt_seconds(s: float) -> str:
    """Three significant digits in s, ms or µs: 1.00 s, 191 ms, 9.79 ms, 35.2 µs."""
    value, unit = next(((s / f, u) for u, f in (("s", 1), ("ms", 1e-3)) if s >= f), (s * 1e6, "µs"))
    return f"{value:.{2 if value < 10 else 1 if value < 100 else 0}f} {unit}"


def cell(text: object) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def svg_figure(fig: Figure, caption: str) -> str:
    """``fig`` as inline SVG in a <figure> with ``caption``, ready to sit in Markdown."""
    import matplotlib

    buf = io.StringIO()
    # Text as text (small, searchable, the reader's sans-serif font); ids the same on every build.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "vrn-bench"}):
        fig.savefig(buf, format="svg", metadata={"Date": None}, facecolor="white")
    svg = buf.getvalue()
    svg = svg[svg.index("<svg") :]  # no XML declaration or doctype inside HTML
    # Its metadata names the matplotlib version; its stylesheet's '*' rule would style the page.
    svg = re.sub(r"<metadata>.*?</metadata>|<style[^>]*>.*?</style>", "", svg, flags=re.S)
    svg = svg.replace(
        "<svg ",
        f'<svg role="img" aria-label="{html.escape(caption)}" style="max-width:100%;height:auto" ',
        1,
    )
    svg = "\n".join(line for line in svg.splitlines() if line.strip())  # a blank line ends the HTML
    return (
        f'<figure class="vrn-bench-figure">\n{svg}\n<figcaption>{caption}</figcaption>\n</figure>'
    )


def ratio_figure(cases: list[dict[str, Any]]) -> str:
    """Each case's measured ratio as a bar, its target as a black tick, on a log scale."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    colours = {"met": "#2e7d32", "missed": "#c62828", "info": "#757575"}
    fig = Figure(figsize=(7.5, 0.5 * len(cases) + 1.8), layout="constrained")
    ax = fig.subplots()
    y = range(len(cases))[::-1]  # the first case on top
    ratios, targets = [c["ratio"] for c in cases], [c["target_value"] for c in cases]
    ax.barh(y, ratios, color=[colours[result_word(c)] for c in cases], height=0.6)
    ax.scatter(targets, y, marker="|", s=500, linewidths=2, color="black", zorder=3)
    ax.set_yticks(list(y), [f"{c['id']}\n{c['target']}" for c in cases], fontsize=9)
    ax.set_xscale("log")
    ax.set_xlim(min(ratios + targets) / 1.5, max(ratios + targets) * 1.5)
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("measured ratio (log scale)")
    ax.set_title("Each speed claim against its target")
    legend = [Patch(color=colour, label=word) for word, colour in colours.items()]
    legend.append(Line2D([], [], color="black", marker="|", ls="", ms=12, label="target"))
    fig.legend(handles=legend, loc="outside lower center", ncols=4, fontsize=9)
    return svg_figure(
        fig,
        "The ratio each case measured (bar) and its target (tick); the label under each case "
        "says which way the target points. Grey: informative, no claim rests on it.",
    )


def decode_figure(cases: list[dict[str, Any]]) -> str:
    """GQA and MQA decoding speed-up over MHA by context length, with their bytes bounds."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for case, colour in zip(cases, ("C0", "C3"), strict=True):
        s, name = case["series"], case["candidate"].split(",")[0]
        ax.plot(s["context"], s["speed_up"], "o-", color=colour, label=f"{name}, measured")
        ax.plot(s["context"], s["bound"], "--", color=colour, label=f"{name}, bytes bound")
        half = [b / 2 for b in s["bound"]]
        ax.plot(s["context"], half, ":", color=colour, label=f"{name}, target: half the bound")
    ax.axhline(1, color="grey", lw=0.8)
    contexts = cases[0]["series"]["context"]
    ax.set_xscale("log", base=2)
    ax.set_xticks(contexts, [f"{c:,}" for c in contexts])
    ax.minorticks_off()
    ax.set_ylim(bottom=0)
    ax.set(xlabel="cached context (tokens)", ylabel="speed-up over MHA (times)")
    ax.set_title("One attention decoding step: speed-up over MHA")
    ax.legend(loc="upper left", fontsize=9)
    return svg_figure(
        fig,
        "Speed-up of one decoding step over MHA (32 query heads) as the cached context grows, "
        "against the bound set by the bytes each step must read.",
    )


def render(results: dict[str, Any]) -> str:
    """Markdown for docs/bench.md: the machine, the cases, figures, the budgets."""
    m, cases = results["machine"], results["cases"]
    lines = [
        "## The machine",
        "",
        f"{m['cpu']}, {m['cores']} cores, ATen kernels {m['aten_capability']}, "
        f"{m['threads']} torch thread{'s' * (m['threads'] > 1)}, device {m['device']}; "
        f"torch {m['torch']}, Python {m['python']}. Measured {m['date']}; load average "
        f"{m['load_average']} at the start"
        + (" (other work on the machine)." if m["load_average"] >= 0.5 else "."),
        "",
    ]
    if m.get("quick"):
        lines += ['!!! warning "Quick run"', "    Tiny sizes (`--quick`): not a measurement.", ""]
    lines += [
        "## Speed claims",
        "",
        "| Case | Baseline | Candidate | Medians | Ratio | Target | Result |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        medians = f"{fmt_seconds(c['baseline_median_s'])} / {fmt_seconds(c['candidate_median_s'])}"
        lines.append(
            f"| [{c['id']}](#{c['id']}) | {cell(c['baseline'])} | {cell(c['candidate'])} | "
            f"{medians} | **{fmt_ratio(c['ratio'])}** | {cell(c['target'])} | "
            f"{badge(result_word(c))} |"
        )
    lines.append("")
    for c in cases:
        lines += [
            f'<a id="{c["id"]}"></a>**{c["id"]}**: {c["title"]}. {badge(result_word(c))} '
            f"ratio {fmt_ratio(c['ratio'])}, target {c['target']}. {c['note']} "
            f"({c['rounds']} rounds.)",
            "",
        ]
    lines += [ratio_figure(cases), ""]
    decode = [c for c in cases if c["id"] in ("gqa-decode", "mqa-decode")]
    if decode:
        lines += [decode_figure(decode), ""]
    lines += [
        "## Budgets",
        "",
        "A notebook's seconds are those of its nbval run in `make unit`, where two pytest workers "
        "run side by side; the test command's are `make test`'s after setup (lint, unit, site).",
        "",
        "| Budget | Measured | Target | Result | Source |",
        "|---|---|---|---|---|",
    ]
    for b in results["budgets"]:
        measured = "—" if b["measured"] is None else f"{b['measured']:g} {b['unit']}"
        source = cell(b["source"] + (f"; {b['note']}" if b["note"] else ""))
        lines.append(
            f"| {cell(b['title'])} | {measured} | {b['target']} | "
            f"{badge(result_word(b))} | {source} |"
        )
    return "\n".join(lines) + "\n"


def published_values(results: dict[str, Any]) -> dict[str, str]:
    """Numbers the notes quote as ``{{ bench.<name> }}``: each case's ratio under its id with '_'
    for '-' (``kv_cache``), plus speed-ups, bounds and fractions, and the machine."""
    cases = {c["id"]: c for c in results["cases"]}
    values = {c_id.replace("-", "_"): fmt_ratio(c["ratio"]) for c_id, c in cases.items()}
    for c_id in ("greedy-vs-transformers", "beam-vs-transformers"):
        if c_id in cases:  # how many times faster ours is: theirs / ours
            values[c_id.replace("-", "_") + "_speedup"] = fmt_ratio(1 / cases[c_id]["ratio"])
    for c_id in ("gqa-decode", "mqa-decode"):
        if c_id in cases:
            s, key = cases[c_id]["series"], c_id.replace("-", "_")
            values[key] = fmt_ratio(s["speed_up"][-1])  # the speed-up at the longest context
            values[key + "_bound"] = fmt_ratio(s["bound"][-1])
            values[key + "_fraction"] = f"{cases[c_id]['ratio']:.0%}"
            values[key + "_context"] = f"{s['context'][-1]:,}"
    if "mha-decode-bandwidth" in cases:
        values["mha_decode_bandwidth"] = f"{cases['mha-decode-bandwidth']['ratio']:.0%}"
    m = results["machine"]
    values |= {"cpu": m["cpu"], "threads": str(m["threads"]), "date": m["date"]}
    return values


if __name__ == "__main__":
    sys.exit(main())
