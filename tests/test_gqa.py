"""Grouped-query / multi-query attention against torch and transformers, and the MHA -> GQA conversion.

Oracles: ``F.scaled_dot_product_attention(enable_gqa=True)``, an explicit repeat-K/V reference, a
random-initialised tiny transformers Llama attention (rotary embeddings included), transformers'
KV cache. Tolerances: float32 with rtol = atol = 1e-5 unless stated.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("transformers", reason="the cross-checks compare with transformers' Llama")
from tolerances import FLOAT32
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import (
    LlamaAttention,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
)

from snippets.attention import (
    KVCache,
    MultiHeadAttention,
    causal_mask,
    grouped_query_attention,
    kv_cache_bytes,
)
from snippets.gpt import GPT, GPTConfig
from snippets.gqa import (
    LLAMA2,
    attention_params,
    convert_gpt_to_gqa,
    decode_step_bytes,
    group_means,
    kv_head_of,
    kv_sharing,
    mean_pool_kv_heads,
)

KIB, MIB = 1024, 1024**2


def heads_of(proj: torch.nn.Linear, x: torch.Tensor, n: int) -> torch.Tensor:
    """Project x (B, L, d_model) and split into n head-major heads: (B, n, L, head_dim)."""
    B, L, _ = x.shape
    return proj(x).view(B, L, n, -1).transpose(1, 2)


def reference(attn: MultiHeadAttention, x: torch.Tensor, context: torch.Tensor, how: str, **kw):
    """The same layer computed by torch SDPA with enable_gqa, or with explicitly repeated K/V heads."""
    q = heads_of(attn.q_proj, x, attn.n_heads)  # (B, H, Lq, hd)
    k = heads_of(attn.k_proj, context, attn.n_kv_heads)  # (B, Hkv, Lk, hd)
    v = heads_of(attn.v_proj, context, attn.n_kv_heads)
    if how == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)  # (B, H, Lq, hd)
    else:  # each K/V head repeated for the G query heads of its group: heads 0..G-1 read head 0
        k = k.repeat_interleave(attn.group_size, dim=1)  # (B, H, Lk, hd)
        v = v.repeat_interleave(attn.group_size, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, **kw)
    B, Lq = x.shape[:2]
    return attn.o_proj(out.transpose(1, 2).reshape(B, Lq, -1))  # (B, Lq, d_model)


@pytest.mark.parametrize("n_kv_heads", [8, 4, 2, 1])  # MHA, GQA, GQA, MQA
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("how", ["sdpa", "repeat"])
def test_matches_torch(n_kv_heads: int, causal: bool, how: str) -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(64, 8, n_kv_heads).eval()
    x = torch.randn(3, 10, 64)
    mask = causal_mask(10) if causal else None
    torch.testing.assert_close(
        attn(x, mask=mask), reference(attn, x, x, how, is_causal=causal), **FLOAT32
    )


@settings(max_examples=30, deadline=None)
@given(
    n_heads=st.sampled_from([1, 2, 4, 6, 8, 12]),
    group_divisor=st.integers(0, 5),
    head_dim=st.sampled_from([1, 4, 8]),
    batch=st.integers(1, 3),
    lq=st.integers(1, 7),
    lk=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_matches_sdpa_any_heads_and_mask(n_heads, group_divisor, head_dim, batch, lq, lk, seed):
    """Cross-attention shapes (Lq != Lk) and random masks, every divisor of n_heads as n_kv_heads."""
    divisors = [g for g in range(1, n_heads + 1) if n_heads % g == 0]
    n_kv_heads = divisors[group_divisor % len(divisors)]
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    attn = MultiHeadAttention(n_heads * head_dim, n_heads, n_kv_heads).eval()
    x = torch.randn(batch, lq, n_heads * head_dim, generator=gen)
    context = torch.randn(batch, lk, n_heads * head_dim, generator=gen)
    mask = torch.rand(batch, n_heads, lq, lk, generator=gen) < 0.7
    mask[..., 0] = True  # every query sees at least one key (an all-masked row is undefined)
    expected = reference(attn, x, context, "sdpa", attn_mask=mask)
    torch.testing.assert_close(attn(x, context=context, mask=mask), expected, **FLOAT32)


def test_grouped_query_attention_weights_match_repeat() -> None:
    torch.manual_seed(0)
    q = torch.randn(2, 8, 5, 4)  # (B, H, Lq, d)
    k, v = torch.randn(2, 2, 6, 4), torch.randn(2, 2, 6, 3)  # (B, Hkv, Lk, d), (B, Hkv, Lk, dv)
    out, weights = grouped_query_attention(q, k, v)
    k_rep = k.repeat_interleave(4, dim=1)  # (B, H, Lk, d)
    ref_weights = (q @ k_rep.transpose(-2, -1) / math.sqrt(4)).softmax(-1)  # (B, H, Lq, Lk)
    torch.testing.assert_close(weights, ref_weights, **FLOAT32)
    torch.testing.assert_close(out, ref_weights @ v.repeat_interleave(4, dim=1), **FLOAT32)
    with pytest.raises(ValueError):
        grouped_query_attention(
            torch.randn(1, 6, 2, 4), torch.randn(1, 4, 2, 4), torch.randn(1, 4, 2, 4)
        )


@pytest.mark.parametrize("n_kv_heads", [8, 2, 1])
def test_kv_cache_incremental_equals_full(n_kv_heads: int) -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(64, 8, n_kv_heads).eval()
    x = torch.randn(2, 12, 64)
    full = attn(x, mask=causal_mask(12))
    cache = KVCache()
    steps = [attn(x[:, :4], mask=causal_mask(4), cache=cache)]  # prefill 4 positions
    steps += [attn(x[:, t : t + 1], cache=cache) for t in range(4, 12)]  # then one at a time
    torch.testing.assert_close(torch.cat(steps, dim=1), full, **FLOAT32)
    assert cache.k.shape == (2, n_kv_heads, 12, 8)  # only the K/V heads are cached


@pytest.mark.parametrize(("n_heads", "n_kv_heads"), [(8, 8), (8, 2), (8, 1), (16, 4)])
def test_query_head_reads_kv_head_i_div_group(n_heads: int, n_kv_heads: int) -> None:
    """Perturbing K/V head j changes exactly query heads i with i // (h / g) == j."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(4 * n_heads, n_heads, n_kv_heads).eval()
    reads = kv_sharing(attn, torch.randn(2, 6, 4 * n_heads))
    expected = torch.zeros(n_heads, n_kv_heads, dtype=torch.bool)
    expected[
        torch.arange(n_heads), [kv_head_of(i, n_heads, n_kv_heads) for i in range(n_heads)]
    ] = True
    assert torch.equal(reads, expected)
    assert reads.sum(dim=0).tolist() == [n_heads // n_kv_heads] * n_kv_heads  # G heads per K/V head


def tiny_llama_config(**kw) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=50,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        attn_implementation="eager",  # the reference path that calls repeat_kv
        **kw,
    )


def llama_and_ours() -> tuple[LlamaAttention, MultiHeadAttention]:
    torch.manual_seed(0)
    llama = LlamaAttention(tiny_llama_config(), layer_idx=0).eval()
    ours = MultiHeadAttention(64, 8, n_kv_heads=2, bias=False).eval()  # Llama has no biases
    ours.load_state_dict(llama.state_dict())  # same names: q_proj, k_proj, v_proj, o_proj
    return llama, ours


def additive_causal_mask(n: int) -> torch.Tensor:
    """transformers' eager attention adds its mask: 0 where allowed, -inf elsewhere, (1, 1, n, n)."""
    return torch.zeros(n, n).masked_fill(~causal_mask(n), float("-inf"))[None, None]


def test_llama_attention_without_rotary() -> None:
    """With the rotary embedding set to the identity (cos 1, sin 0) the two layers are the same."""
    llama, ours = llama_and_ours()
    x = torch.randn(2, 9, 64)
    identity = (torch.ones(2, 9, 8), torch.zeros(2, 9, 8))  # (B, L, head_dim) each
    expected, expected_weights = llama(x, identity, attention_mask=additive_causal_mask(9))
    out, weights = ours(x, mask=causal_mask(9), need_weights=True)
    torch.testing.assert_close(out, expected, **FLOAT32)
    torch.testing.assert_close(weights, expected_weights, **FLOAT32)


def test_llama_attention_with_rotary() -> None:
    """Real rotary embedding applied to q, k; then our grouping equals Llama's repeat_kv."""
    llama, ours = llama_and_ours()
    cfg = tiny_llama_config()
    x = torch.randn(2, 9, 64)
    cos, sin = LlamaRotaryEmbedding(cfg)(x, torch.arange(9)[None].expand(2, -1))  # (B, L, hd)
    expected, _ = llama(x, (cos, sin), attention_mask=additive_causal_mask(9))

    q = heads_of(ours.q_proj, x, 8)  # (B, 8, L, hd)
    k, v = heads_of(ours.k_proj, x, 2), heads_of(ours.v_proj, x, 2)  # (B, 2, L, hd)
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    out, _ = grouped_query_attention(q, k, v, causal_mask(9))  # (B, 8, L, hd)
    out = ours.o_proj(out.transpose(1, 2).reshape(2, 9, 64))  # (B, L, d_model)
    torch.testing.assert_close(out, expected, **FLOAT32)


def test_param_count_matches_llama_attention() -> None:
    llama, ours = llama_and_ours()
    count = sum(p.numel() for p in llama.parameters())
    assert (
        attention_params(64, 8, 2, bias=False) == count == sum(p.numel() for p in ours.parameters())
    )


@settings(max_examples=40, deadline=None)
@given(
    n_heads=st.sampled_from([1, 2, 3, 4, 8, 16]),
    n_kv_index=st.integers(0, 4),
    head_dim=st.sampled_from([1, 2, 8]),
    bias=st.booleans(),
)
def test_param_formula_equals_counted(n_heads, n_kv_index, head_dim, bias) -> None:
    divisors = [g for g in range(1, n_heads + 1) if n_heads % g == 0]
    n_kv_heads = divisors[n_kv_index % len(divisors)]
    attn = MultiHeadAttention(n_heads * head_dim, n_heads, n_kv_heads, bias=bias)
    counted = sum(p.numel() for p in attn.parameters())
    assert attention_params(n_heads * head_dim, n_heads, n_kv_heads, bias) == counted


def test_param_saving_at_d512_h8() -> None:
    """The claims brief's numbers: attention weights 1,048,576 (MHA) -> 589,824 (MQA)."""
    assert attention_params(512, 8, None, bias=False) == 4 * 512**2 == 1_048_576
    assert attention_params(512, 8, 1, bias=False) == 589_824


def test_kv_cache_bytes_matches_transformers_cache() -> None:
    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_llama_config()).eval()
    with torch.no_grad():
        cache = model(torch.randint(0, 50, (3, 7)), use_cache=True).cache
    held = sum(
        t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
    )
    assert held == kv_cache_bytes(2, 2, 8, seq_len=7, batch_size=3, bytes_per_value=4)


def test_kv_cache_bytes_matches_our_gpt_cache() -> None:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, block_size=16, n_layers=3, n_heads=8, n_kv_heads=2, d_model=64)
    model = GPT(cfg).eval()
    cache = model.new_cache()
    with torch.no_grad():
        model(torch.randint(0, 50, (2, 5)), cache)
    held = sum(t.numel() * t.element_size() for c in cache for t in (c.k, c.v))
    assert held == kv_cache_bytes(3, 2, 8, seq_len=5, batch_size=2, bytes_per_value=4)


def test_decode_step_bytes_is_weights_plus_cache() -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(64, 8, 2, bias=False).eval()
    cache = KVCache()
    attn(torch.randn(3, 11, 64), mask=causal_mask(11), cache=cache)
    weights = sum(p.numel() * p.element_size() for p in attn.parameters())
    cached = cache.k.numel() * cache.k.element_size() + cache.v.numel() * cache.v.element_size()
    assert decode_step_bytes(64, 8, 2, context_len=11, batch_size=3) == weights + cached


def test_llama2_published_configurations() -> None:
    # transformers' LlamaConfig defaults are Llama 2 7B: a second source for our 7B entry.
    default = LlamaConfig()
    seven = LLAMA2["7B"]
    assert (seven.n_layers, seven.d_model, seven.n_heads) == (
        default.num_hidden_layers,
        default.hidden_size,
        default.num_attention_heads,
    )
    assert all(LLAMA2[s].head_dim == 128 for s in LLAMA2)
    assert [s for s, a in LLAMA2.items() if a.n_kv_heads < a.n_heads] == ["70B"]  # 7B, 13B: MHA
    seventy = LLAMA2["70B"]
    per_token = kv_cache_bytes(seventy.n_layers, seventy.n_kv_heads, seventy.head_dim, seq_len=1)
    as_mha = kv_cache_bytes(seventy.n_layers, seventy.n_heads, seventy.head_dim, seq_len=1)
    assert per_token == 320 * KIB  # fp16, 8 K/V heads
    assert as_mha == 2.5 * MIB == 8 * per_token  # 64 K/V heads


def test_conversion_with_all_heads_is_identity() -> None:
    torch.manual_seed(0)
    attn = MultiHeadAttention(64, 8).eval()
    same = mean_pool_kv_heads(attn, 8)
    for name, tensor in attn.state_dict().items():
        assert torch.equal(same.state_dict()[name], tensor), name
    x = torch.randn(2, 5, 64)
    torch.testing.assert_close(same(x), attn(x), rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(
    n_heads=st.sampled_from([2, 4, 6, 8, 12]),
    n_kv_index=st.integers(0, 5),
    head_dim=st.sampled_from([2, 4]),
    bias=st.booleans(),
)
def test_pooled_heads_are_group_means(n_heads, n_kv_index, head_dim, bias) -> None:
    divisors = [g for g in range(1, n_heads + 1) if n_heads % g == 0]
    n_kv_heads = divisors[n_kv_index % len(divisors)]
    G = n_heads // n_kv_heads
    attn = MultiHeadAttention(n_heads * head_dim, n_heads, bias=bias)
    pooled = mean_pool_kv_heads(attn, n_kv_heads)
    assert pooled.n_kv_heads == n_kv_heads
    for name in ("k_proj", "v_proj"):
        old, new = getattr(attn, name), getattr(pooled, name)
        for j in range(n_kv_heads):  # explicit loop over groups: a second way to the same means
            rows = [
                old.weight[i * head_dim : (i + 1) * head_dim] for i in range(j * G, (j + 1) * G)
            ]
            new_rows = new.weight[j * head_dim : (j + 1) * head_dim]
            torch.testing.assert_close(new_rows, torch.stack(rows).mean(0), **FLOAT32)
            if bias:
                b = [old.bias[i * head_dim : (i + 1) * head_dim] for i in range(j * G, (j + 1) * G)]
                new_b = new.bias[j * head_dim : (j + 1) * head_dim]
                torch.testing.assert_close(new_b, torch.stack(b).mean(0), **FLOAT32)
    for name in ("q_proj", "o_proj"):  # untouched
        assert torch.equal(getattr(pooled, name).weight, getattr(attn, name).weight)


def test_group_means_undo_repeated_heads() -> None:
    """A GQA layer written as MHA with repeated K/V heads pools back to itself, outputs equal."""
    torch.manual_seed(0)
    gqa = MultiHeadAttention(64, 8, 2).eval()
    mha = MultiHeadAttention(64, 8).eval()
    with torch.no_grad():
        for name in ("q_proj", "o_proj"):
            getattr(mha, name).load_state_dict(getattr(gqa, name).state_dict())
        for name in ("k_proj", "v_proj"):
            heads = getattr(gqa, name).weight.view(2, 1, 8, 64).expand(2, 4, 8, 64)  # (g, G, hd, d)
            getattr(mha, name).weight.copy_(heads.reshape(64, 64))
            getattr(mha, name).bias.copy_(
                getattr(gqa, name).bias.view(2, 1, 8).expand(2, 4, 8).reshape(64)
            )
    x = torch.randn(2, 7, 64)
    torch.testing.assert_close(mha(x), gqa(x), **FLOAT32)
    back = mean_pool_kv_heads(mha, 2)
    torch.testing.assert_close(back.k_proj.weight, gqa.k_proj.weight, **FLOAT32)
    torch.testing.assert_close(group_means(mha.v_proj.bias, 2, 8), gqa.v_proj.bias, **FLOAT32)
    torch.testing.assert_close(back(x), gqa(x), **FLOAT32)


def test_convert_gpt_to_gqa() -> None:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=40, block_size=16, n_layers=2, n_heads=4, d_model=32)
    mha = GPT(cfg).eval()
    ids = torch.randint(0, 40, (2, 9))
    before = mha(ids)
    gqa = convert_gpt_to_gqa(mha, 2)
    assert gqa.cfg.n_kv_heads == 2 and mha.cfg.n_kv_heads is None
    assert all(b.attn.n_kv_heads == 2 and b.attn.k_proj.out_features == 16 for b in gqa.blocks)
    assert gqa.lm_head.weight is gqa.wte.weight  # weight tying survives the copy
    torch.testing.assert_close(mha(ids), before, rtol=0, atol=0)  # the original is left alone
    torch.testing.assert_close(convert_gpt_to_gqa(mha, 4)(ids), before, rtol=0, atol=0)
    with pytest.raises(ValueError):
        convert_gpt_to_gqa(mha, 3)


def test_counts_are_ints_and_head_indices_index() -> None:
    """Counts and head indices are exact integers, not floats that happen to be whole: they
    index lists, and print without a decimal point."""
    heads = list(range(4))
    for i in range(8):
        j = kv_head_of(i, 8, 4)
        assert type(j) is int and heads[j] == i // 2
    counts = (attention_params(64, 8, 2), decode_step_bytes(64, 8, 2, 11), LLAMA2["70B"].head_dim)
    assert all(type(n) is int for n in counts)


def test_defaults_are_mha_with_biases_and_one_sequence() -> None:
    assert attention_params(64, 8) == sum(p.numel() for p in MultiHeadAttention(64, 8).parameters())
    assert decode_step_bytes(64, 8, None, context_len=11) == decode_step_bytes(
        64, 8, 8, context_len=11, batch_size=1
    )


def test_kv_sharing_returns_bools_and_leaves_the_layer_as_it_was() -> None:
    """One position is enough (its attention weight is 1 whatever the keys: the values tell),
    the result is boolean, and the probe's hooks are gone afterwards."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 8, 2).eval()
    reads = kv_sharing(attn, torch.randn(1, 1, 32))
    assert reads.dtype == torch.bool
    assert reads.tolist() == [[i // 4 == j for j in range(2)] for i in range(8)]
    assert not attn.o_proj._forward_pre_hooks


def test_conversion_keeps_the_dropout_rate() -> None:
    """In training mode, with the same random draws, a conversion to all heads still computes
    what the original does: dropout included."""
    attn = MultiHeadAttention(64, 8, dropout=0.3).train()
    same = mean_pool_kv_heads(attn, 8).train()
    x = torch.randn(2, 5, 64)
    torch.manual_seed(1)
    expected = attn(x)
    torch.manual_seed(1)
    torch.testing.assert_close(same(x), expected, rtol=0, atol=0)


def test_llama2_table_is_the_released_configs() -> None:
    """num_hidden_layers, hidden_size, num_attention_heads and num_key_value_heads of the
    config.json files of meta-llama/Llama-2-{7b,13b,70b}-hf."""
    published = {"7B": (32, 4096, 32, 32), "13B": (40, 5120, 40, 40), "70B": (80, 8192, 64, 8)}
    assert {s: (a.n_layers, a.d_model, a.n_heads, a.n_kv_heads) for s, a in LLAMA2.items()} == (
        published
    )
