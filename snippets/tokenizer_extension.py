"""Extending a tokenizer and a model to a new language, as OpenHathi did for Hindi.

Sarvam AI, "OpenHathi Series: An Approach To Build Bilingual LLMs Frugally", blog, 12 Dec 2023, and
the Sarvam team's recipe "Extending Llama to a new language" in meta-llama/llama-recipes
(recipes/multilingual): train a SentencePiece model on Hindi text, append its pieces to Llama-2's,
give the model embedding rows for the new ids, then continue training. SentencePiece: Kudo and
Richardson, "SentencePiece: A simple and language independent subword tokenizer and detokenizer for
Neural Text Processing", 2018, arXiv:1808.06226; BPE: Sennrich et al., 2016, arXiv:1508.07909.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import re
from collections.abc import Callable, Iterable, Sequence

import sentencepiece as spm
import torch
import torch.nn.functional as F
from sentencepiece import sentencepiece_model_pb2 as sp_model
from torch import nn

NORMAL = sp_model.ModelProto.SentencePiece.NORMAL
BPE = sp_model.TrainerSpec.BPE


# --8<-- [start:fertility]
def fertility(encode: Callable[[str], list[int]], texts: Iterable[str]) -> float:
    """Tokens per whitespace-separated word over all ``texts`` (the tokenizer's 'fertility')."""
    tokens = words = 0
    for text in texts:
        tokens += len(encode(text))
        words += len(text.split())
    return tokens / words


def tokens_per_char(encode: Callable[[str], list[int]], texts: Iterable[str]) -> float:
    """Tokens per Unicode code point over all ``texts``."""
    tokens = chars = 0
    for text in texts:
        tokens += len(encode(text))
        chars += len(text)
    return tokens / chars


def token_ratios(
    encode: Callable[[str], list[int]], pairs: Iterable[tuple[str, str]]
) -> list[float]:
    """For each (text, translation) pair: tokens of the translation / tokens of the text."""
    return [len(encode(b)) / len(encode(a)) for a, b in pairs]


# --8<-- [end:fertility]


def word_frequency_lines(lang: str, n_words: int, keep: str, scale: int = 10**6) -> list[str]:
    """The ``n_words`` most frequent words of ``lang`` in ``wordfreq`` that fully match the regex
    ``keep``, as SentencePiece 'tsv' input lines ``word<TAB>count`` (count = frequency x
    ``scale``, at least 1): a word-frequency list stands in for a corpus."""
    import wordfreq  # only needed here: the tokenizer code itself does not depend on it

    pattern = re.compile(keep)
    frequencies = wordfreq.get_frequency_dict(lang)
    words = itertools.islice(wordfreq.iter_wordlist(lang), n_words)  # most frequent first
    return [
        f"{word}\t{max(1, round(frequencies[word] * scale))}"
        for word in words
        if pattern.fullmatch(word)
    ]


# --8<-- [start:train]
def train_sentencepiece(lines: Iterable[str], vocab_size: int, **options: object) -> bytes:
    """A BPE SentencePiece model with ``vocab_size`` pieces trained on ``lines``, serialized.

    Offline and in memory: the trainer reads an iterator and writes to a buffer. ``options`` go to
    ``SentencePieceTrainer.train`` (e.g. ``byte_fallback=True``; ``input_format="tsv"`` for
    ``word<TAB>count`` lines). Defaults: BPE like Llama, every character kept
    (``character_coverage=1.0``, as the OpenHathi recipe does), one thread, no log output.
    """
    settings = {
        "model_type": "bpe",
        "character_coverage": 1.0,
        "num_threads": 1,
        "minloglevel": 2,
    } | options
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buffer, vocab_size=vocab_size, **settings
    )
    return buffer.getvalue()


# --8<-- [end:train]


def load_model_proto(model: bytes) -> sp_model.ModelProto:
    """The protobuf message of a serialized SentencePiece model: its pieces, scores and types."""
    proto = sp_model.ModelProto()
    proto.ParseFromString(model)
    return proto


# --8<-- [start:merge]
def merge_sentencepiece(base: bytes, extra: bytes) -> bytes:
    """A serialized SentencePiece model: every piece of ``base`` at its original id, then each
    normal piece of ``extra`` that ``base`` lacks, in ``extra``'s order.

    Both models must be BPE. Control, unknown and byte pieces of ``extra`` (``<s>``, ``<0xE0>``...)
    are tokenizer machinery, not vocabulary: the merged model keeps those of ``base``.

    Scores decide BPE's merge order: when encoding, SentencePiece repeatedly joins the adjacent
    pair whose joined string is the piece with the highest score. The appended pieces get
    ``extra``'s scores shifted to lie below every score of ``base``: ``base``'s merges keep their
    priority (text ``base`` could encode is encoded as before whenever no new piece can form in
    it), and the new pieces keep ``extra``'s relative order, so text made only of the new script
    is split as ``extra`` splits it. (The OpenHathi recipe gives every new piece score 0 instead:
    all tied, at the top of a SentencePiece BPE model's scores, which are minus their rank; that
    loses ``extra``'s merge order.)
    """
    merged, new = load_model_proto(base), load_model_proto(extra)
    for name, proto in (("base", merged), ("extra", new)):
        if proto.trainer_spec.model_type != BPE:
            raise ValueError(f"{name} is not a BPE model; merge_sentencepiece merges BPE models")
    known = {piece.piece for piece in merged.pieces}
    appended = [p for p in new.pieces if p.type == NORMAL and p.piece not in known]
    if appended:
        floor = min(p.score for p in merged.pieces if p.type == NORMAL) - 1.0
        top = max(p.score for p in appended)
        for piece in appended:
            added = merged.pieces.add()  # next free id: len(base) + k for the k-th appended piece
            added.piece, added.type = piece.piece, NORMAL
            added.score = floor - (top - piece.score)  # below base, in extra's relative order
    merged.trainer_spec.vocab_size = len(merged.pieces)
    return merged.SerializeToString()


# --8<-- [end:merge]


# --8<-- [start:embeddings]
class ExtendedEmbedding(nn.Module):
    """A (V_old + n_new, d) table: the V_old rows of ``weight``, frozen and bit-identical, then
    ``n_new`` trainable rows for the new token ids.

    New rows are random: each dimension is drawn from a normal with the mean and standard
    deviation of that dimension over the old rows, so a new token starts at the scale of the
    trained ones (its logits neither dominate the softmax nor vanish).
    """

    def __init__(
        self, weight: torch.Tensor, n_new: int, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        old = weight.detach()  # (V_old, d)
        self.old_rows = nn.Parameter(old.clone(), requires_grad=False)  # (V_old, d)
        mean, std = old.mean(dim=0), old.std(dim=0)  # (d,), (d,)
        noise = torch.randn(n_new, old.size(1), generator=generator, dtype=old.dtype)  # (n_new, d)
        self.new_rows = nn.Parameter(mean + std * noise.to(old.device))  # (n_new, d)

    @property
    def weight(self) -> torch.Tensor:
        return torch.cat([self.old_rows, self.new_rows])  # (V_old + n_new, d)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.weight)  # (..., d)


class OutputProjection(nn.Module):
    """Output layer reading its weight from a table: logits = x W^T, one row per token."""

    def __init__(self, table: ExtendedEmbedding) -> None:
        super().__init__()
        self.table = table

    @property
    def weight(self) -> torch.Tensor:
        return self.table.weight  # (V, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.table.weight.t()  # (..., d) @ (d, V) -> (..., V)


def extend_vocabulary(
    model: nn.Module, n_new: int, generator: torch.Generator | None = None
) -> nn.Module:
    """Give ``model`` (token embedding ``wte``, output layer ``lm_head`` without bias, config
    ``cfg``, like ``snippets.gpt.GPT``) rows for ``n_new`` new token ids, in place.

    Input and output embeddings both grow: a tied output layer keeps sharing the (extended)
    input table; an untied one (Llama-2's) gets its own extended copy. Old rows stay bit-identical
    and frozen, so for old ids the model computes what it computed before.
    """
    tied = model.lm_head.weight is model.wte.weight
    model.wte = ExtendedEmbedding(model.wte.weight, n_new, generator)
    table = model.wte if tied else ExtendedEmbedding(model.lm_head.weight, n_new, generator)
    model.lm_head = OutputProjection(table)
    model.cfg = dataclasses.replace(model.cfg, vocab_size=model.cfg.vocab_size + n_new)
    return model


# --8<-- [end:embeddings]


# --8<-- [start:formats]
def translation_text(translation: str, original: str) -> str:
    """OpenHathi phase 1: a translated paragraph, a blank line, then the original paragraph, which
    the model learns to generate from its translation."""
    return f"{translation}\n\n{original}"


def alternating_text(first: Sequence[str], second: Sequence[str]) -> str:
    """OpenHathi phase 2: a paragraph whose language changes after every sentence. Sentence i comes
    from ``first`` when i is even and from ``second`` (its translation) when i is odd."""
    if len(first) != len(second):
        raise ValueError(f"{len(first)} sentences and {len(second)} translations")
    return " ".join(
        a if i % 2 == 0 else b for i, (a, b) in enumerate(zip(first, second, strict=True))
    )


# --8<-- [end:formats]
