"""Checks of snippets.transformer: layers against torch.nn.TransformerEncoderLayer /
TransformerDecoderLayer with copied weights, parameter counts against a model built on the meta
device, positional encodings against the formula, causality, label smoothing, greedy decoding.

Tolerances: float32, atol = rtol = 1e-5 unless stated.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import FLOAT32
from torch import nn

from snippets.attention import MultiHeadAttention
from snippets.transformer import (
    BASE,
    BIG,
    DecoderLayer,
    EncoderLayer,
    PositionwiseFFN,
    Transformer,
    TransformerConfig,
    ffn_parameter_count,
    greedy_decode,
    label_smoothed_cross_entropy,
    label_smoothing_floor,
    mha_parameter_count,
    parameter_count,
    sinusoidal_positions,
)

TINY = TransformerConfig(vocab_size=13, d_model=16, n_heads=4, d_ff=32, n_layers=2, dropout=0.0)


def copy_mha(ref: nn.MultiheadAttention, own: MultiHeadAttention) -> None:
    """Load our W^Q, W^K, W^V (stacked) and W^O into a torch.nn.MultiheadAttention."""
    ref.in_proj_weight.copy_(torch.cat([own.q_proj.weight, own.k_proj.weight, own.v_proj.weight]))
    ref.in_proj_bias.copy_(torch.cat([own.q_proj.bias, own.k_proj.bias, own.v_proj.bias]))
    ref.out_proj.weight.copy_(own.o_proj.weight)
    ref.out_proj.bias.copy_(own.o_proj.bias)


def copy_ffn_and_norms(ref: nn.Module, own: nn.Module, n_norms: int) -> None:
    ref.linear1.load_state_dict(own.ffn.linear1.state_dict())
    ref.linear2.load_state_dict(own.ffn.linear2.state_dict())
    for i in range(1, n_norms + 1):
        getattr(ref, f"norm{i}").load_state_dict(getattr(own, f"norm{i}").state_dict())


def torch_layer_kwargs(cfg: TransformerConfig) -> dict:
    # Post-LN (norm_first=False), ReLU, no dropout: the paper's layer.
    return dict(
        d_model=cfg.d_model,
        nhead=cfg.n_heads,
        dim_feedforward=cfg.d_ff,
        dropout=0.0,
        activation="relu",
        batch_first=True,
        norm_first=False,
    )


@pytest.mark.parametrize("padded", [False, True])
def test_encoder_layer_matches_torch(padded: bool) -> None:
    torch.manual_seed(0)
    own = EncoderLayer(TINY).eval()
    ref = nn.TransformerEncoderLayer(**torch_layer_kwargs(TINY)).eval()
    with torch.no_grad():
        copy_mha(ref.self_attn, own.self_attn)
        copy_ffn_and_norms(ref, own, n_norms=2)
    x = torch.randn(3, 6, TINY.d_model)
    keep = torch.arange(6)[None, :] < torch.tensor([6, 4, 2])[:, None]  # (B, Ls) real tokens
    with torch.no_grad():
        if padded:
            out = own(x, mask=keep[:, None, None, :])
            expected = ref(x, src_key_padding_mask=~keep)
            # torch may zero padded positions; compare real tokens only.
            torch.testing.assert_close(out[keep], expected[keep], **FLOAT32)
        else:
            torch.testing.assert_close(own(x), ref(x), **FLOAT32)


def test_decoder_layer_matches_torch() -> None:
    torch.manual_seed(1)
    own = DecoderLayer(TINY).eval()
    ref = nn.TransformerDecoderLayer(**torch_layer_kwargs(TINY)).eval()
    with torch.no_grad():
        copy_mha(ref.self_attn, own.self_attn)
        copy_mha(ref.multihead_attn, own.cross_attn)
        copy_ffn_and_norms(ref, own, n_norms=3)
    y, memory = torch.randn(2, 5, TINY.d_model), torch.randn(2, 7, TINY.d_model)
    keep = torch.arange(7)[None, :] < torch.tensor([7, 3])[:, None]  # (B, Ls)
    future = nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.bool)  # True = blocked
    with torch.no_grad():
        out, weights = own(y, memory, memory_mask=keep[:, None, None, :], need_weights=True)
        expected = ref(y, memory, tgt_mask=future, memory_key_padding_mask=~keep)
    torch.testing.assert_close(out, expected, **FLOAT32)
    assert weights.shape == (2, TINY.n_heads, 5, 7)  # (B, h, Lt, Ls): queries from the decoder
    assert (weights[1, :, :, 3:] == 0).all()  # padded source positions get no attention


def test_ffn_is_equation_2() -> None:
    torch.manual_seed(2)
    ffn = PositionwiseFFN(8, 32)
    x = torch.randn(2, 3, 8)
    W1, b1, W2, b2 = ffn.linear1.weight.T, ffn.linear1.bias, ffn.linear2.weight.T, ffn.linear2.bias
    torch.testing.assert_close(ffn(x), torch.clamp(x @ W1 + b1, min=0) @ W2 + b2, **FLOAT32)


def test_module_parameter_counts_of_the_base_model() -> None:
    mha = MultiHeadAttention(512, 8)
    ffn = PositionwiseFFN(512, 2048)
    assert sum(p.numel() for p in mha.parameters()) == mha_parameter_count(512) == 1_050_624
    assert sum(p.numel() for p in ffn.parameters()) == ffn_parameter_count(512, 2048) == 2_099_712


@pytest.mark.parametrize(
    "cfg",
    [BASE, BIG, TransformerConfig(share_embeddings=False), TINY],
    ids=["base", "big", "base-unshared", "tiny"],
)
def test_parameter_count_formula_matches_the_model(cfg: TransformerConfig) -> None:
    with torch.device("meta"):  # shapes only: no memory is allocated for the weights
        model = Transformer(cfg)
    counts = parameter_count(cfg)
    assert sum(p.numel() for p in model.parameters()) == counts["total"]
    assert sum(p.numel() for p in model.encoder.parameters()) == counts["encoder"]
    assert sum(p.numel() for p in model.decoder.parameters()) == counts["decoder"]


def test_base_and_big_counts_are_near_table_3() -> None:
    # Table 3 of Vaswani et al.: 65M (base) and 213M (big), with a shared 37K BPE vocabulary.
    base, big = parameter_count(BASE)["total"], parameter_count(BIG)["total"]
    assert abs(base - 65e6) / 65e6 < 0.05
    assert abs(big - 213e6) / 213e6 < 0.01
    # Three separate vocabulary matrices would be far off the table.
    assert parameter_count(TransformerConfig(share_embeddings=False))["total"] > 95e6


def test_shared_embeddings_are_one_matrix() -> None:
    shared = Transformer(TINY)
    unshared = Transformer(replace(TINY, share_embeddings=False))
    assert shared.src_embed.weight is shared.tgt_embed.weight is shared.out_proj.weight
    assert unshared.src_embed.weight is not unshared.tgt_embed.weight
    assert unshared.out_proj.weight is not unshared.tgt_embed.weight


def test_sinusoidal_positions_follow_the_formula() -> None:
    d = 16
    pe = sinusoidal_positions(50, d)
    assert pe.shape == (50, d)
    for pos in (0, 1, 7, 49):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


@settings(max_examples=30, deadline=None)
@given(pos=st.integers(0, 40), k=st.integers(0, 40))
def test_a_fixed_offset_is_a_rotation(pos: int, k: int) -> None:
    """PE(pos + k) is a linear function of PE(pos): each (sin, cos) pair rotates by k * frequency."""
    d = 8
    pe = sinusoidal_positions(100, d).double()
    freq = 1 / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
    s, c = pe[pos, 0::2], pe[pos, 1::2]
    ks, kc = torch.sin(k * freq), torch.cos(k * freq)
    torch.testing.assert_close(pe[pos + k, 0::2], s * kc + c * ks, atol=1e-5, rtol=0)
    torch.testing.assert_close(pe[pos + k, 1::2], c * kc - s * ks, atol=1e-5, rtol=0)


def test_embeddings_are_scaled_by_sqrt_d_model() -> None:
    model = Transformer(TINY).eval()
    ids = torch.tensor([[3, 1, 4]])
    expected = model.src_embed(ids) * math.sqrt(TINY.d_model) + sinusoidal_positions(3, 16)
    torch.testing.assert_close(model.embed(ids, model.src_embed), expected, **FLOAT32)


@pytest.mark.parametrize("j", [1, 3, 5])
def test_a_future_target_token_cannot_change_earlier_outputs(j: int) -> None:
    torch.manual_seed(3)
    model = Transformer(TINY).eval()
    src, tgt = torch.randint(0, 13, (2, 5)), torch.randint(0, 13, (2, 6))
    changed = tgt.clone()
    changed[:, j] = (tgt[:, j] + 1) % 13
    with torch.no_grad():
        a, b = model(src, tgt), model(src, changed)
    torch.testing.assert_close(a[:, :j], b[:, :j], atol=0, rtol=0)  # bit-identical before j
    assert not torch.allclose(a[:, j:], b[:, j:])  # from j on, the change is visible


def test_padded_source_tokens_are_ignored() -> None:
    torch.manual_seed(4)
    model = Transformer(TINY).eval()
    src, tgt = torch.randint(0, 13, (1, 6)), torch.randint(0, 13, (1, 4))
    keep = torch.tensor([[True, True, True, True, False, False]])
    other = src.clone()
    other[0, 4:] = (src[0, 4:] + 5) % 13  # change only the padding
    with torch.no_grad():
        torch.testing.assert_close(model(src, tgt, keep), model(other, tgt, keep), **FLOAT32)


def test_sequences_longer_than_max_len_raise() -> None:
    model = Transformer(replace(TINY, max_len=4))
    with pytest.raises(ValueError, match="exceeds max_len=4"):
        model.encode(torch.zeros(1, 5, dtype=torch.long))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothed_loss_matches_torch(eps: float) -> None:
    torch.manual_seed(5)
    logits, target = torch.randn(20, 7), torch.randint(0, 7, (20,))
    torch.testing.assert_close(
        label_smoothed_cross_entropy(logits, target, eps),
        F.cross_entropy(logits, target, label_smoothing=eps),
        **FLOAT32,
    )


def test_without_smoothing_the_floor_is_zero() -> None:
    assert label_smoothing_floor(0.0, 11) == (1.0, 0.0)


@settings(max_examples=40, deadline=None)
@given(eps=st.floats(0.01, 0.9), n_classes=st.integers(2, 50), seed=st.integers(0, 1000))
def test_the_floor_is_reached_at_the_smoothed_target_and_nowhere_lower(
    eps: float, n_classes: int, seed: int
) -> None:
    p_correct, floor = label_smoothing_floor(eps, n_classes)
    q = torch.full((1, n_classes), eps / n_classes, dtype=torch.float64)
    q[0, 0] = p_correct  # the smoothed target of class 0
    target = torch.tensor([0])
    at_optimum = label_smoothed_cross_entropy(q.log(), target, eps).item()
    assert at_optimum == pytest.approx(floor, abs=1e-9)
    other = q.log() + 0.5 * torch.randn(1, n_classes, generator=torch.Generator().manual_seed(seed))
    assert label_smoothed_cross_entropy(other.double(), target, eps).item() >= floor - 1e-9


def test_greedy_decode_agrees_with_teacher_forcing() -> None:
    """Each greedy token is the argmax of the full forward pass over the tokens before it."""
    torch.manual_seed(6)
    model = Transformer(TINY).eval()
    src = torch.randint(0, 12, (3, 5))
    out = greedy_decode(model, src, bos_id=12, n_tokens=6)  # (B, 6)
    tgt = torch.cat([torch.full((3, 1), 12), out[:, :-1]], dim=1)  # BOS + all but the last
    with torch.no_grad():
        assert torch.equal(model(src, tgt).argmax(-1), out)


def test_configs_are_table_3_rows() -> None:
    """Base: N=6, d_model=512, d_ff=2048, h=8, P_drop=0.1; big: d_model=1024, d_ff=4096, h=16,
    P_drop=0.3 (Table 3); one shared vocabulary of about 37000 BPE tokens (Section 5.1, EN-DE);
    positions for inputs of up to 512 tokens."""
    rows = {
        "base": (BASE, (6, 512, 2048, 8, 0.1)),
        "big": (BIG, (6, 1024, 4096, 16, 0.3)),
    }
    for name, (cfg, row) in rows.items():
        assert (cfg.n_layers, cfg.d_model, cfg.d_ff, cfg.n_heads, cfg.dropout) == row, name
        assert (cfg.vocab_size, cfg.max_len, cfg.share_embeddings) == (37000, 512, True), name


def test_whole_model_matches_torch_stacks_without_final_norms() -> None:
    """encode and decode against torch's TransformerEncoder and TransformerDecoder with norm=None
    (each post-LN layer ends in its own LayerNorm) fed the same embeddings; every decoder layer's
    cross-attention weights are returned, zero on padded source positions."""
    torch.manual_seed(7)
    model = Transformer(TINY).eval()
    layer_kw = torch_layer_kwargs(TINY)
    enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(**layer_kw), TINY.n_layers, norm=None, enable_nested_tensor=False
    ).eval()
    dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(**layer_kw), TINY.n_layers).eval()
    with torch.no_grad():
        for ref, own in zip(enc.layers, model.encoder, strict=True):
            copy_mha(ref.self_attn, own.self_attn)
            copy_ffn_and_norms(ref, own, n_norms=2)
        for ref, own in zip(dec.layers, model.decoder, strict=True):
            copy_mha(ref.self_attn, own.self_attn)
            copy_mha(ref.multihead_attn, own.cross_attn)
            copy_ffn_and_norms(ref, own, n_norms=3)
    src, tgt = torch.randint(0, 13, (2, 7)), torch.randint(0, 13, (2, 5))
    keep = torch.arange(7)[None, :] < torch.tensor([7, 4])[:, None]  # (B, Ls) real tokens
    future = nn.Transformer.generate_square_subsequent_mask(5, dtype=torch.bool)  # True = blocked
    with torch.no_grad():
        memory = model.encode(src, keep)
        expected = enc(model.embed(src, model.src_embed), src_key_padding_mask=~keep)
        torch.testing.assert_close(memory[keep], expected[keep], **FLOAT32)
        logits, weights = model.decode(tgt, memory, keep, need_weights=True)
        hidden = dec(
            model.embed(tgt, model.tgt_embed),
            memory,
            tgt_mask=future,
            memory_key_padding_mask=~keep,
        )
        torch.testing.assert_close(logits, model.out_proj(hidden), **FLOAT32)
    assert len(weights) == TINY.n_layers
    assert all(w.shape == (2, TINY.n_heads, 5, 7) and (w[1, ..., 4:] == 0).all() for w in weights)


def test_greedy_decode_reads_the_last_position() -> None:
    """With untied embeddings this tiny model's greedy output changes from step to step (tied, it
    repeats one token), so the teacher-forcing check shows which position each step reads."""
    torch.manual_seed(3)
    model = Transformer(replace(TINY, share_embeddings=False)).eval()
    src = torch.randint(0, 12, (3, 5))
    out = greedy_decode(model, src, bos_id=12, n_tokens=8)  # (B, 8)
    assert (out[:, 1:] != out[:, :-1]).any()  # the premise: not one token repeated
    tgt = torch.cat([torch.full((3, 1), 12), out[:, :-1]], dim=1)
    with torch.no_grad():
        assert torch.equal(model(src, tgt).argmax(-1), out)


def test_embedding_init_and_the_positional_table() -> None:
    """Embeddings ~ N(0, 1/d_model), so that after the sqrt(d_model) scaling each feature has
    variance 1; the positional table is a fixed buffer, not part of the state dict; exactly
    max_len tokens fit; a decoder layer returns only its output unless asked for weights."""
    torch.manual_seed(0)
    cfg = replace(TINY, vocab_size=500, d_model=64, share_embeddings=False, max_len=8)
    model = Transformer(cfg)
    for table in (model.src_embed, model.tgt_embed):
        assert abs(table.weight.std().item() - 64**-0.5) < 0.003
    assert "pe" not in model.state_dict() and model.pe.shape == (8, 64)
    assert model.embed(torch.zeros(1, 8, dtype=torch.long), model.src_embed).shape == (1, 8, 64)
    with pytest.raises(ValueError, match="exceeds max_len=8"):
        model.embed(torch.zeros(1, 9, dtype=torch.long), model.src_embed)
    layer = DecoderLayer(TINY).eval()
    out = layer(torch.randn(2, 3, TINY.d_model), torch.randn(2, 4, TINY.d_model))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3, TINY.d_model)
