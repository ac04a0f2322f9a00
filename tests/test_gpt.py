"""Our GPT against transformers' GPT2LMHeadModel with the same (random) weights."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="the cross-checks compare with transformers' GPT-2")
from reference_models import tiny_gpt2_pair
from tolerances import FLOAT32

from snippets.attention import MultiHeadAttention
from snippets.gpt import GPT, GPTConfig, from_gpt2_state_dict

# float32 on CPU: the two models sum the same products in different orders.


@pytest.mark.parametrize("shape", [(1, 1), (2, 7), (3, 32)])
def test_logits_match_transformers_gpt2(shape: tuple[int, int]) -> None:
    hf, ours = tiny_gpt2_pair()
    idx = torch.randint(0, 61, shape)
    with torch.no_grad():
        torch.testing.assert_close(ours(idx), hf(idx).logits, **FLOAT32)


def test_logits_match_transformers_where_the_gelu_approximation_shows() -> None:
    """GPT-2 uses the tanh approximation of GELU. At GPT-2's init (std 0.02) the MLP's inputs are
    so small that tanh and exact GELU agree within the tolerance; at std 0.2 they do not, and ours
    must still match transformers' GPT-2."""
    import transformers

    hf, ours = tiny_gpt2_pair(init_std=0.2)
    exact_cfg = transformers.GPT2Config(**(hf.config.to_dict() | {"activation_function": "gelu"}))
    exact = transformers.GPT2LMHeadModel(exact_cfg).eval()
    exact.load_state_dict(hf.state_dict())
    idx = torch.randint(0, 61, (3, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = hf(idx).logits
        torch.testing.assert_close(ours(idx), theirs, **FLOAT32)
        # The check has the power to tell the two apart: exact GELU misses GPT-2 by ~1e-3.
        assert not torch.allclose(exact(idx).logits, theirs, **FLOAT32)


def test_cached_forward_matches_full_forward() -> None:
    _, ours = tiny_gpt2_pair(seed=1)
    idx = torch.randint(0, 61, (2, 12))
    with torch.no_grad():
        full = ours(idx)  # (2, 12, V)
        cache = ours.new_cache()
        # A prompt of 5, then one token at a time, then a chunk of 3 at once.
        parts = [ours(idx[:, :5], cache)]
        parts += [ours(idx[:, t : t + 1], cache) for t in range(5, 9)]
        parts.append(ours(idx[:, 9:], cache))
    torch.testing.assert_close(torch.cat(parts, dim=1), full, **FLOAT32)
    assert len(cache[0]) == 12


def test_decoder_only_causal_and_tied() -> None:
    _, ours = tiny_gpt2_pair()
    attentions = [m for m in ours.modules() if isinstance(m, MultiHeadAttention)]
    assert len(attentions) == ours.cfg.n_layers  # one self-attention per block, no cross-attention
    assert ours.lm_head.weight is ours.wte.weight
    idx = torch.randint(0, 61, (1, 10))
    changed = idx.clone()
    changed[0, 6] = (idx[0, 6] + 1) % 61
    with torch.no_grad():
        a, b = ours(idx), ours(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=0)  # the past ignores the future
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_block_size_is_enforced() -> None:
    _, ours = tiny_gpt2_pair()
    with pytest.raises(ValueError, match="block_size"):
        ours(torch.zeros(1, 33, dtype=torch.long))
    cache = ours.new_cache()
    ours(torch.zeros(1, 32, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="block_size"):
        ours(torch.zeros(1, 1, dtype=torch.long), cache)


def test_gpt2_loader_rejects_grouped_heads() -> None:
    hf, _ = tiny_gpt2_pair()
    cfg = GPTConfig(vocab_size=61, block_size=32, n_layers=2, n_heads=4, n_kv_heads=2, d_model=48)
    with pytest.raises(ValueError, match="n_kv_heads"):
        from_gpt2_state_dict(hf.state_dict(), cfg)


def test_config_defaults_are_gpt2_small() -> None:
    """GPTConfig() is GPT-2 small, as transformers' GPT2Config() is: 124,439,808 parameters with
    the output layer tied to the token embedding, the same count as GPT2LMHeadModel's."""
    import transformers

    ours, theirs = GPTConfig(), transformers.GPT2Config()
    assert (ours.vocab_size, ours.block_size, ours.n_layers, ours.n_heads, ours.d_model) == (
        theirs.vocab_size,
        theirs.n_positions,
        theirs.n_layer,
        theirs.n_head,
        theirs.n_embd,
    )
    with torch.device("meta"):  # shapes only
        n_ours = sum(p.numel() for p in GPT(ours).parameters())
        n_theirs = sum(p.numel() for p in transformers.GPT2LMHeadModel(theirs).parameters())
    assert n_ours == n_theirs == 124_439_808


def test_bias_false_removes_every_linear_bias() -> None:
    cfg = GPTConfig(vocab_size=61, block_size=32, n_layers=2, n_heads=4, d_model=48, bias=False)
    linears = [m for m in GPT(cfg).modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 2 * 6 + 1  # q, k, v, o, fc, proj per block; the output layer
    assert all(m.bias is None for m in linears)


def test_initialisation_is_gpt2s() -> None:
    """Weights of linear layers and embeddings ~ N(0, 0.02) (GPT-2's initializer_range), linear
    biases zero: per tensor within five standard errors, over all within 2%."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=500, block_size=64, n_layers=2, n_heads=4, d_model=64))
    weights = []
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            w = module.weight.detach().flatten()
            n = w.numel()
            assert abs(w.mean().item()) < 5 * 0.02 / n**0.5, name
            assert abs(w.std().item() - 0.02) < 5 * 0.02 / (2 * n) ** 0.5, name
            weights.append(w)
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            assert not module.bias.any(), name
    assert abs(torch.cat(weights).std().item() - 0.02) < 0.0004


def test_training_mode_dropout_matches_transformers_gpt2() -> None:
    """In training mode, with the same random draws, our GPT equals transformers' GPT-2 (eager
    attention) with dropout p on the embeddings, the attention weights and both residual
    branches."""
    import transformers

    p = 0.2
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(
        vocab_size=61, n_positions=32, n_embd=48, n_layer=2, n_head=4, resid_pdrop=p
    )
    hf_cfg.embd_pdrop = hf_cfg.attn_pdrop = p
    hf_cfg._attn_implementation = "eager"  # sdpa draws its dropout mask differently
    hf = transformers.GPT2LMHeadModel(hf_cfg).train()
    cfg = GPTConfig(vocab_size=61, block_size=32, n_layers=2, n_heads=4, d_model=48, dropout=p)
    ours = from_gpt2_state_dict(hf.state_dict(), cfg).train()
    idx = torch.randint(0, 61, (2, 9), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    dropped = ours(idx)
    torch.manual_seed(5)
    torch.testing.assert_close(dropped, hf(idx).logits, **FLOAT32)
    with torch.no_grad():
        assert not torch.allclose(ours.eval()(idx), dropped, **FLOAT32)  # it did drop


def test_cache_with_a_one_layer_model() -> None:
    """The number of cached positions is read from the first layer's cache, which a one-layer
    model also has."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=61, block_size=32, n_layers=1, n_heads=4, d_model=48)).eval()
    idx = torch.randint(0, 61, (2, 8))
    with torch.no_grad():
        cache = model.new_cache()
        steps = [model(idx[:, :5], cache)] + [model(idx[:, t : t + 1], cache) for t in range(5, 8)]
        torch.testing.assert_close(torch.cat(steps, dim=1), model(idx), **FLOAT32)
