"""Needle in a haystack: a long-context retrieval test, and a tiny model to run it on.

Kamradt's test (Nov 2023): hide one sentence (the needle) at a chosen depth of a long filler text
(the haystack), ask a question only that sentence answers, score the answer, and repeat over a grid
of context lengths x depths; the result is a heatmap. RULER (Hsieh et al. 2024, arXiv:2404.06654)
generalises it (several needles, distractor keys, other tasks) and scores by string match.

Public API (stable; other notes import it):

- ``make_context(needle, filler, length, depth, count=len, sep=" ") -> (context, offset)``: the
  filler sentences in order (cycled) joined by ``sep``, the needle inserted once at the sentence
  boundary nearest ``depth * length``; the whole context reaches ``length`` units of ``count``
  and exceeds it by less than one filler sentence; ``offset`` = ``count`` of the text before the
  needle.
- ``Needle(text, question, answer)``: one fact to hide, the question that asks for it, its answer.
- ``run_grid(model, needles, filler, lengths, depths, *, count=len, sep=" ", template=TEMPLATE,
  score=score_answer, batched=False) -> NIAHResult``: every needle at every (depth, length) cell;
  ``model(prompt) -> answer`` (or, with ``batched=True``, a list of prompts -> a list of answers);
  ``filler`` is a list of sentences or a function of the needle's index returning one;
  ``template`` has the fields ``{context}`` and ``{question}``.
- ``NIAHResult``: ``lengths``, ``depths``, ``scores`` (depths, lengths, needles), ``offsets``
  (same shape), ``answers`` (nested lists, same shape); ``cell_scores`` (depths, lengths) = mean
  over needles.
- ``score_answer(answer, expected) -> float``: the share of expected strings found in the answer as
  whole words, ignoring case (RULER's string-match recall).
- ``plot_heatmap(result, ax=None, *, title=..., unit="tokens", mark_length=None) -> Axes``.

The tiny model (a word-level key-value retrieval task for ``snippets.gpt.GPT``):

- ``NOISE_FILLER``: filler sentences written for this project (nothing is downloaded).
- ``WordTokenizer(words)`` with ``encode``, ``decode``; ``word_count(text)`` counts words.
- ``NUMBER_FILLER``: the tiny model's filler, sentences with ``{value}`` fields for numbers.
- ``RetrievalTask`` (dataclass): keys, values, filler, needle/question/prompt templates, training
  lengths, distractor keys, ``long_bias``; ``task.tokenizer()``, ``task.needles(n, gen)``,
  ``task.haystack(needle, gen, n_distractors=None)``, ``task.sample_length(gen)``.
- ``retrieval_batch(task, tok, batch_size, gen) -> (ids, last, answer)``: training prompts.
- ``train_retrieval_model(task, model_cfg=None, steps=400, batch_size=32, lr=3e-3, gen=None,
  target_loss=None) -> (model, tokenizer, losses)``: a 2-layer GPT (d_model 64, 256 learned
  positions) unless ``model_cfg`` says otherwise; stops early once the loss reaches ``target_loss``.
- ``retrieval_answerer(model, tokenizer) -> batched model``: greedy next word after each prompt.

A prompt-side change (a cue before the answer, say) is a change of ``RetrievalTask.template``: the
words it adds join the vocabulary, and training and ``run_grid`` both format prompts with it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes

from snippets.gpt import GPT, GPTConfig

TEMPLATE = "{context}\n\n{question}"


# --8<-- [start:make-context]
def make_context(
    needle: str,
    filler: Sequence[str],
    length: int,
    depth: float,
    count: Callable[[str], int] = len,
    sep: str = " ",
) -> tuple[str, int]:
    """A haystack of ``length`` units (as measured by ``count``) with ``needle`` at ``depth``.

    The filler sentences are taken in order, cycled, and joined by ``sep``: the fewest with which
    the context (needle included) reaches ``length``. The needle goes whole, once, at the sentence
    boundary whose offset is nearest ``depth * length`` (0 = start, 1 = end). Returns the context
    and ``offset``, the ``count`` of the text before the needle.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if not filler:
        raise ValueError("filler needs at least one sentence")
    if any(needle in sentence for sentence in filler):
        raise ValueError("a filler sentence contains the needle: it would occur more than once")

    def sentences(n: int) -> list[str]:
        return [filler[i % len(filler)] for i in range(n)]

    def total(n: int) -> int:  # units of a context with n filler sentences
        return count(sep.join([*sentences(n), needle]))

    # The fewest filler sentences that reach `length`: double, then bisect (count may be slow).
    hi = 1
    while total(hi) < length:
        hi *= 2
    lo = hi // 2 if hi > 1 else -1  # total(lo) < length, or lo = -1 when total(0) may suffice
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if total(mid) >= length else (mid, hi)
    hay = sentences(hi)

    def before(i: int) -> str:  # the text before a needle placed after i filler sentences
        return sep.join(hay[:i]) + sep if i > 0 else ""

    # The boundary nearest the target offset: bisect for the first one at or past it.
    target = depth * length
    lo, hi = 0, len(hay)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if count(before(mid)) < target else (lo, mid)
    if lo > 0 and target - count(before(lo - 1)) <= count(before(lo)) - target:
        lo -= 1
    tail = sep + sep.join(hay[lo:]) if lo < len(hay) else ""
    return before(lo) + needle + tail, count(before(lo))


# --8<-- [end:make-context]


@dataclass(frozen=True)
class Needle:
    """One fact to hide (``text``), the ``question`` only it answers, and the expected ``answer``."""

    text: str
    question: str
    answer: str


# --8<-- [start:score]
def score_answer(answer: str, expected: str | Sequence[str]) -> float:
    """Share of the ``expected`` strings that occur in ``answer`` as whole words, ignoring case.

    RULER scores by string match (recall of the reference strings); matching whole words keeps
    "4" from counting as found inside "47".
    """
    wanted = [expected] if isinstance(expected, str) else list(expected)
    text = " ".join(answer.casefold().split())
    found = [
        re.search(rf"(?<!\w){re.escape(' '.join(e.casefold().split()))}(?!\w)", text) is not None
        for e in wanted
    ]
    return sum(found) / len(found)


# --8<-- [end:score]


@dataclass
class NIAHResult:
    """Scores of a needle-in-a-haystack grid; arrays are indexed (depth, length, needle)."""

    lengths: list[int]
    depths: list[float]
    scores: np.ndarray  # (n_depths, n_lengths, n_needles)
    offsets: np.ndarray  # (n_depths, n_lengths, n_needles): count of the text before the needle
    answers: list[list[list[str]]] = field(repr=False)

    @property
    def cell_scores(self) -> np.ndarray:
        """Mean score of each (depth, length) cell over the needles: (n_depths, n_lengths)."""
        return self.scores.mean(axis=-1)


# --8<-- [start:run-grid]
def run_grid(
    model: Callable,
    needles: Sequence[Needle],
    filler: Sequence[str] | Callable[[int], Sequence[str]],
    lengths: Sequence[int],
    depths: Sequence[float],
    *,
    count: Callable[[str], int] = len,
    sep: str = " ",
    template: str = TEMPLATE,
    score: Callable[[str, str], float] = score_answer,
    batched: bool = False,
) -> NIAHResult:
    """Hide every needle at every (depth, length), ask the model, score its answers.

    ``model(prompt) -> answer``, or with ``batched=True`` ``model(prompts) -> answers``.
    ``filler`` is a list of sentences, or ``filler(i)`` gives the haystack for needle ``i``.
    The prompt is ``template.format(context=..., question=needle.question)``.
    """
    cells = [(d, n, i) for d in depths for n in lengths for i in range(len(needles))]
    prompts, offsets = [], []
    for depth, length, i in cells:
        hay = filler(i) if callable(filler) else filler
        context, offset = make_context(needles[i].text, hay, length, depth, count, sep)
        prompts.append(template.format(context=context, question=needles[i].question))
        offsets.append(offset)
    answers = list(model(prompts)) if batched else [model(p) for p in prompts]
    shape = (len(depths), len(lengths), len(needles))
    scores = [score(a, needles[i].answer) for a, (_, _, i) in zip(answers, cells, strict=True)]
    answer = iter(answers)  # in the order of `cells`: depth, then length, then needle
    nested = [[[next(answer) for _ in needles] for _ in lengths] for _ in depths]
    return NIAHResult(
        list(lengths),
        list(depths),
        np.array(scores, dtype=float).reshape(shape),
        np.array(offsets).reshape(shape),
        nested,
    )


# --8<-- [end:run-grid]


def plot_heatmap(
    result: NIAHResult,
    ax: Axes | None = None,
    *,
    title: str = "Needle in a haystack",
    unit: str = "tokens",
    mark_length: int | None = None,
) -> Axes:
    """Kamradt's heatmap: context length across, needle depth down, colour = mean score.

    ``mark_length`` draws a dashed line after the last length not above it (e.g. the longest
    context seen in training).
    """
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    image = ax.imshow(
        result.cell_scores, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto", origin="upper"
    )  # rows: depths (0 % at the top), columns: lengths
    for (row, col), value in np.ndenumerate(result.cell_scores):
        ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=10)
    ax.set_xticks(range(len(result.lengths)), [str(n) for n in result.lengths])
    ax.set_yticks(range(len(result.depths)), [f"{100 * d:.0f}" for d in result.depths])
    if mark_length is not None:
        inside = sum(n <= mark_length for n in result.lengths)
        ax.axvline(inside - 0.5, color="black", ls="--", lw=1.5)
    ax.set(title=title, xlabel=f"context length ({unit})", ylabel="needle depth (%)")
    ax.figure.colorbar(image, ax=ax, label="mean score (recall)")
    return ax


# --8<-- [start:filler]
# Filler written for this project, in the spirit of RULER's "noise" haystack (a few plain sentences
# repeated): nothing to download, no licence question, and nothing in it resembles a needle.
# Lowercase with punctuation split off, so that a word-level tokenizer reads it as it stands.
NOISE_FILLER = (
    "the river runs past the old mill .",
    "a cold wind comes down from the hills .",
    "the baker opens her shop before dawn .",
    "children walk to school along the lane .",
    "the train to the coast leaves at noon .",
    "rain falls on the roofs of the town .",
    "a dog sleeps in the sun by the door .",
    "the market is busy on a saturday .",
    "boats rest on the sand at low tide .",
    "the lamps come on as the light fades .",
)
# The tiny model's haystack: the same kind of sentences, some with a number ({value}, drawn from
# the needles' values), so that the answer is not simply the only number in the context.
NUMBER_FILLER = (
    "the river runs past the old mill .",
    "the train to the coast leaves at {value} .",
    "the baker sells {value} loaves before dawn .",
    "rain falls on the roofs of the town .",
    "the market has {value} stalls on a saturday .",
    "a dog sleeps in the sun by the door .",
    "boats rest on the sand at low tide .",
    "the bus to school stops at gate {value} .",
    "the lamps come on as the light fades .",
    "a cold wind comes down from the hills .",
)
# --8<-- [end:filler]

KEYS = ("owl", "fox", "bee", "elk", "yak", "ram", "eel", "ant")
KEYS += ("bat", "cod", "hen", "jay", "emu", "gnu", "ape", "doe")


def word_count(text: str) -> int:
    """Length in words: the token count of ``WordTokenizer``."""
    return len(text.split())


class WordTokenizer:
    """Whitespace tokenizer over a fixed vocabulary; id 0 is the padding token ``<pad>``."""

    def __init__(self, words: Sequence[str]) -> None:
        self.itos = ["<pad>", *dict.fromkeys(w for w in words if w != "<pad>")]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi[w] for w in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.itos[i] for i in ids)


def _literal_words(template: str) -> list[str]:
    """The words of a format string outside its ``{fields}``."""
    return re.sub(r"\{[^}]*\}", " ", template).split()


def _randint(n: int, gen: torch.Generator | None) -> int:
    return int(torch.randint(n, (1,), generator=gen))


# --8<-- [start:task]
@dataclass
class RetrievalTask:
    """Key-value retrieval in a word-level haystack: "the code of owl is 17 ." hidden in filler,
    then "what is the code of owl ?"; the answer is the next word, "17".

    Filler ``{value}`` fields (as in ``NUMBER_FILLER``) get random values, so that the needle is not
    the only sentence with a number; with ``n_distractors`` > 0 the haystack also holds other keys'
    codes (RULER's multi-key needles), and only matching the key finds the answer. Training
    contexts are ``min_length`` to ``train_length`` words long (plus the part of a sentence that
    reaching the length takes), uniformly, or with ``long_bias`` longer ones likelier.
    """

    keys: tuple[str, ...] = KEYS
    values: tuple[str, ...] = tuple(str(v) for v in range(10, 42))
    filler: tuple[str, ...] = NOISE_FILLER
    needle_template: str = "the code of {key} is {value} ."
    question_template: str = "what is the code of {key} ?"
    template: str = "{context} {question}"  # the prompt; the answer is the word after it
    train_length: int = 64  # longest context in training, in words
    min_length: int = 8
    n_distractors: int = 2
    long_bias: bool = False

    def tokenizer(self) -> WordTokenizer:
        words = []
        for t in (*self.filler, self.needle_template, self.question_template, self.template):
            words += _literal_words(t)
        return WordTokenizer([*words, *self.keys, *self.values])

    def needle(self, key: str, value: str) -> Needle:
        return Needle(
            self.needle_template.format(key=key, value=value),
            self.question_template.format(key=key),
            value,
        )

    def needles(self, n: int, gen: torch.Generator | None = None) -> list[Needle]:
        """``n`` needles with random keys and values."""
        return [
            self.needle(
                self.keys[_randint(len(self.keys), gen)],
                self.values[_randint(len(self.values), gen)],
            )
            for _ in range(n)
        ]

    def haystack(
        self, needle: Needle, gen: torch.Generator | None = None, n_distractors: int | None = None
    ) -> list[str]:
        """The filler from a random sentence on, numbers drawn at random, and ``n_distractors``
        other keys' codes at random places (default: the task's)."""
        n_distractors = self.n_distractors if n_distractors is None else n_distractors
        start = _randint(len(self.filler), gen)
        hay = [
            s.format(value=self.values[_randint(len(self.values), gen)]) if "{value}" in s else s
            for s in (*self.filler[start:], *self.filler[:start])
        ]
        others = [k for k in self.keys if self.question_template.format(key=k) != needle.question]
        for _ in range(n_distractors):
            key = others.pop(_randint(len(others), gen))
            value = self.values[_randint(len(self.values), gen)]
            hay.insert(
                _randint(len(hay) + 1, gen), self.needle_template.format(key=key, value=value)
            )
        return hay

    def sample_length(self, gen: torch.Generator | None = None) -> int:
        """A training context length in [min_length, train_length]: uniform, or with ``long_bias``
        a density rising linearly, so that the last positions are trained more often."""
        span = self.train_length - self.min_length + 1
        if not self.long_bias:
            return self.min_length + _randint(span, gen)
        return self.min_length + int(float(torch.rand((), generator=gen)) ** 0.5 * span)


# --8<-- [end:task]


def _encode_batch(tok: WordTokenizer, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, L) and each prompt's last position (B,)."""
    rows = [tok.encode(p) for p in prompts]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)  # (B, L), 0 = <pad>
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
    return ids, torch.tensor([len(r) - 1 for r in rows])


def retrieval_batch(
    task: RetrievalTask, tok: WordTokenizer, batch_size: int, gen: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training prompts of random length (up to ``task.train_length``) and depth.

    Returns ids (B, L), the last prompt position (B,) and the answer's id (B,).
    """
    prompts, answers = [], []
    for needle in task.needles(batch_size, gen):
        length = task.sample_length(gen)
        depth = float(torch.rand((), generator=gen))
        context, _ = make_context(
            needle.text, task.haystack(needle, gen), length, depth, count=word_count
        )
        prompts.append(task.template.format(context=context, question=needle.question))
        answers.append(tok.stoi[needle.answer])
    ids, last = _encode_batch(tok, prompts)
    return ids, last, torch.tensor(answers)


# --8<-- [start:train]
def train_retrieval_model(
    task: RetrievalTask,
    model_cfg: GPTConfig | None = None,
    steps: int = 400,
    batch_size: int = 32,
    lr: float = 3e-3,
    gen: torch.Generator | None = None,
    target_loss: float | None = None,
) -> tuple[GPT, WordTokenizer, list[float]]:
    """Train a tiny GPT to answer with the needle's value: cross-entropy on the answer word only.

    At most ``steps`` steps; with ``target_loss``, stop once the mean loss of the last 20 steps is
    below it (how long the model takes to learn the lookup varies from seed to seed).
    The default model has 256 learned positions, far more than training uses, so that longer
    contexts can be fed in: positions past the training length keep their random initialisation.
    """
    tok = task.tokenizer()
    cfg = model_cfg or GPTConfig(
        vocab_size=len(tok), block_size=256, n_layers=2, n_heads=4, d_model=64
    )
    model = GPT(cfg)
    # No weight decay: position embeddings that get no gradient stay exactly as initialised.
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    losses: list[float] = []
    for _ in range(steps):
        ids, last, answer = retrieval_batch(task, tok, batch_size, gen)  # (B, L), (B,), (B,)
        logits = model(ids)[torch.arange(len(ids)), last]  # (B, V): the word after the prompt
        loss = F.cross_entropy(logits, answer)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if target_loss is not None and len(losses) >= 20 and np.mean(losses[-20:]) < target_loss:
            break
    return model.eval(), tok, losses


# --8<-- [end:train]


def retrieval_answerer(
    model: GPT, tok: WordTokenizer, batch_size: int = 128
) -> Callable[[Sequence[str]], list[str]]:
    """A batched ``model(prompts) -> answers`` for ``run_grid``: the likeliest next word."""

    @torch.no_grad()
    def answer(prompts: Sequence[str]) -> list[str]:
        device = next(model.parameters()).device
        order = sorted(range(len(prompts)), key=lambda i: word_count(prompts[i]))
        words: dict[int, str] = {}
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]  # similar lengths: little padding
            ids, last = _encode_batch(tok, [prompts[i] for i in chunk])  # (B, L), (B,)
            logits = model(ids.to(device))[torch.arange(len(chunk)), last.to(device)]  # (B, V)
            for i, best in zip(chunk, logits.argmax(dim=-1).tolist(), strict=True):
                words[i] = tok.itos[best]
        return [words[i] for i in range(len(prompts))]

    return answer
