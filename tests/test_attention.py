"""Cross-checks of snippets.attention against torch: nn.MultiheadAttention with copied weights and
F.scaled_dot_product_attention, plus property tests over shapes and masks.

Tolerances: float32 throughout, atol = rtol = 1e-5 (the two sides sum in different orders).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import FLOAT32
from torch import nn

from snippets.attention import (
    KVCache,
    MultiHeadAttention,
    causal_mask,
    grouped_query_attention,
    kv_cache_bytes,
    scaled_dot_product_attention,
)
from snippets.gpt import GPT, GPTConfig


def torch_mha_like(own: MultiHeadAttention, d_model: int, bias: bool) -> nn.MultiheadAttention:
    """A torch.nn.MultiheadAttention holding the same weights as ``own`` (W^Q, W^K, W^V stacked)."""
    ref = nn.MultiheadAttention(d_model, own.n_heads, bias=bias, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(
            torch.cat([own.q_proj.weight, own.k_proj.weight, own.v_proj.weight])
        )  # (3 d_model, d_model)
        ref.out_proj.weight.copy_(own.o_proj.weight)
        if bias:
            ref.in_proj_bias.copy_(torch.cat([own.q_proj.bias, own.k_proj.bias, own.v_proj.bias]))
            ref.out_proj.bias.copy_(own.o_proj.bias)
    return ref.eval()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("masking", ["none", "causal", "random", "key_padding"])
def test_mha_matches_torch_multihead_attention(bias: bool, cross: bool, masking: str) -> None:
    torch.manual_seed(0)
    B, Lq, d, h = 3, 5, 24, 4
    Lk = 7 if cross else Lq
    own = MultiHeadAttention(d, h, bias=bias).eval()
    ref = torch_mha_like(own, d, bias)
    x = torch.randn(B, Lq, d)
    context = torch.randn(B, Lk, d) if cross else x

    # Our masks: True = may attend. torch's boolean masks: True = may NOT attend.
    own_mask, attn_mask, key_padding_mask = None, None, None
    if masking == "causal":
        own_mask = torch.ones(Lq, Lk, dtype=torch.bool).tril()  # (Lq, Lk)
        attn_mask = ~own_mask
    elif masking == "random":
        own_mask = torch.rand(Lq, Lk) < 0.6
        own_mask[:, 0] = True  # every query keeps at least one key
        attn_mask = ~own_mask
    elif masking == "key_padding":
        lengths = torch.tensor([Lk, Lk - 2, 1])
        keep = torch.arange(Lk)[None, :] < lengths[:, None]  # (B, Lk)
        own_mask = keep[:, None, None, :]  # (B, 1, 1, Lk)
        key_padding_mask = ~keep

    out, weights = own(x, context=None if not cross else context, mask=own_mask, need_weights=True)
    with torch.no_grad():
        ref_out, ref_weights = ref(
            x,
            context,
            context,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            need_weights=True,
            average_attn_weights=False,  # per-head weights (B, h, Lq, Lk)
        )
    torch.testing.assert_close(out, ref_out, **FLOAT32)
    torch.testing.assert_close(weights, ref_weights, **FLOAT32)
    assert weights.shape == (B, h, Lq, Lk)


def test_mha_without_weights_returns_the_same_output() -> None:
    torch.manual_seed(1)
    mha = MultiHeadAttention(16, 4)
    x = torch.randn(2, 6, 16)
    out, _ = mha(x, need_weights=True)
    torch.testing.assert_close(mha(x), out, atol=0, rtol=0)


@pytest.mark.parametrize("dv", [8, 5])
def test_sdpa_matches_torch_with_boolean_masks(dv: int) -> None:
    torch.manual_seed(2)
    q, k = torch.randn(2, 3, 4, 8), torch.randn(2, 3, 6, 8)
    v = torch.randn(2, 3, 6, dv)
    mask = torch.rand(2, 1, 4, 6) < 0.5  # broadcast over heads
    mask[..., 0] = True
    for m in (None, mask):
        out, weights = scaled_dot_product_attention(q, k, v, m)
        torch.testing.assert_close(
            out, F.scaled_dot_product_attention(q, k, v, attn_mask=m), **FLOAT32
        )
        assert weights.shape == (2, 3, 4, 6)


@pytest.mark.parametrize("lead", [(), (3,), (2, 3, 2)], ids=["2d", "3d", "5d"])
def test_sdpa_takes_any_number_of_leading_dims(lead: tuple[int, ...]) -> None:
    """q (..., Lq, d): batch and head axes are optional, and there may be more of them."""
    g = torch.Generator().manual_seed(6)
    q, k, v = (torch.randn(*lead, n, 8, generator=g) for n in (4, 6, 6))
    mask = torch.rand(*lead, 4, 6, generator=g) < 0.5
    mask[..., 0] = True
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(
        out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **FLOAT32
    )
    assert weights.shape == (*lead, 4, 6)


def test_causal_mask_equals_is_causal() -> None:
    torch.manual_seed(3)
    q, k, v = (torch.randn(2, 4, 9, 8) for _ in range(3))
    out, _ = scaled_dot_product_attention(q, k, v, causal_mask(9))
    torch.testing.assert_close(
        out, F.scaled_dot_product_attention(q, k, v, is_causal=True), **FLOAT32
    )


def test_causal_mask_values() -> None:
    m = causal_mask(4)
    assert m.dtype == torch.bool and m.shape == (4, 4)
    for i in range(4):
        for j in range(4):
            assert m[i, j].item() == (j <= i)


@pytest.mark.parametrize("n_kv_heads", [1, 2, 8])
def test_grouped_query_attention_matches_torch_enable_gqa(n_kv_heads: int) -> None:
    torch.manual_seed(4)
    q = torch.randn(2, 8, 5, 16)
    k, v = torch.randn(2, n_kv_heads, 5, 16), torch.randn(2, n_kv_heads, 5, 16)
    out, _ = grouped_query_attention(q, k, v, causal_mask(5))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    torch.testing.assert_close(out, ref, **FLOAT32)


def test_cached_decoding_equals_full_causal_attention() -> None:
    """Feeding one position at a time through a KVCache gives the rows of full causal attention."""
    torch.manual_seed(5)
    mha = MultiHeadAttention(16, 4, n_kv_heads=2)
    x = torch.randn(2, 7, 16)
    full = mha(x, mask=causal_mask(7))  # (B, L, d_model)
    cache = KVCache()
    steps = [mha(x[:, t : t + 1], cache=cache) for t in range(7)]  # each (B, 1, d_model)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **FLOAT32)
    assert len(cache) == 7


def test_kv_cache_writes_in_place_and_doubles_when_full() -> None:
    """The cache's buffers grow only when a step does not fit, then to twice the length needed:
    over L one-token steps they are copied O(log L) times, and a step that fits copies nothing
    (the returned keys and values stay views of the same storage)."""
    B, H, hd, dv = 2, 3, 4, 5  # values of another width than keys
    g = torch.Generator().manual_seed(7)
    keys, values = torch.randn(B, H, 40, hd, generator=g), torch.randn(B, H, 40, dv, generator=g)
    cache, capacity, storage, copies = KVCache(), 0, None, 0
    for t in range(40):
        k, v = cache.append(keys[:, :, t : t + 1], values[:, :, t : t + 1])
        length = t + 1
        if length > capacity:  # full: a new buffer for twice the length
            capacity, copies = 2 * length, copies + 1
        else:  # room left: written in place
            assert k.untyped_storage().data_ptr() == storage
        storage = k.untyped_storage().data_ptr()
        assert k.untyped_storage().nbytes() == B * H * capacity * hd * k.element_size()
        assert v.untyped_storage().nbytes() == B * H * capacity * dv * v.element_size()
        assert torch.equal(k, keys[:, :, :length]) and torch.equal(v, values[:, :, :length])
    assert copies == 5  # allocated at lengths 1, 3, 7, 15 and 31
    assert len(cache) == 40


def test_kv_cache_bytes_matches_a_real_cache() -> None:
    cfg = GPTConfig(vocab_size=50, block_size=32, n_layers=3, n_heads=4, n_kv_heads=2, d_model=32)
    model = GPT(cfg).eval()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.randint(0, 50, (2, 11)), cache=cache)
    measured = sum(c.k.nbytes + c.v.nbytes for c in cache)  # float32 keys and values
    head_dim = cfg.d_model // cfg.n_heads
    assert measured == kv_cache_bytes(3, 2, head_dim, 11, batch_size=2, bytes_per_value=4)


def test_kv_cache_bytes_llama2_70b() -> None:
    # Llama 2 70B: 80 layers, 8 key/value heads of 128 dims, fp16: 320 KiB per token;
    # the same model with 64 key/value heads (MHA) would need 2.5 MiB.
    assert kv_cache_bytes(80, 8, 128, seq_len=1) == 320 * 1024
    assert kv_cache_bytes(80, 64, 128, seq_len=1) == int(2.5 * 1024 * 1024)


@pytest.mark.parametrize(
    ("d_model", "n_heads", "n_kv_heads", "message"),
    [(10, 3, None, "not divisible by n_heads"), (16, 8, 3, "not divisible by n_kv_heads")],
)
def test_bad_head_counts_raise(d_model: int, n_heads: int, n_kv_heads, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MultiHeadAttention(d_model, n_heads, n_kv_heads)


@st.composite
def attention_inputs(draw):
    """q, k, v and a boolean mask of random shape; every query row keeps at least one key."""
    B, H = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    Lq, Lk, d = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(B, H, n, d, generator=g) for n in (Lq, Lk, Lk))
    mask = torch.rand(B, H, Lq, Lk, generator=g) < draw(st.floats(0.1, 1.0))
    mask[..., draw(st.integers(0, Lk - 1))] = True
    return q, k, v, mask


@settings(max_examples=60, deadline=None)
@given(attention_inputs())
def test_weights_are_a_distribution_over_allowed_keys(inputs) -> None:
    q, k, v, mask = inputs
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]), **FLOAT32)
    assert (weights[~mask] == 0).all()  # masked keys get exactly zero weight
    assert (weights >= 0).all()
    torch.testing.assert_close(
        out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), **FLOAT32
    )


def test_dropout_acts_on_attention_weights_like_torch() -> None:
    """With the same random draws, our MHA in training mode equals torch's, which drops attention
    weights (not head outputs): both draw one Bernoulli mask of shape (B, H, Lq, Lk)."""
    d, h = 16, 4
    ours = MultiHeadAttention(d, h, dropout=0.5).train()
    ref = torch_mha_like(ours, d, bias=True)
    ref.dropout = 0.5
    ref.train()
    x = torch.randn(2, 5, d)
    torch.manual_seed(3)
    out = ours(x)
    torch.manual_seed(3)
    expected, _ = ref(x, x, x, need_weights=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
