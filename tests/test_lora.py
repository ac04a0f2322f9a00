"""LoRALinear against peft's LoRA layer with copied A and B; the frozen base; merging; add_lora."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import ONE_LAYER
from torch import nn

from snippets.gpt import GPT, GPTConfig
from snippets.lora import LoRALinear, add_lora, count_parameters, merge_lora

peft = pytest.importorskip("peft", reason="peft is the reference LoRA implementation")

# float32 on CPU: the same products, summed in the same order, up to how the matmuls are blocked.


def peft_and_ours(
    d_in: int, d_out: int, r: int, alpha: float, bias: bool, seed: int
) -> tuple[nn.Module, LoRALinear]:
    """peft's LoRA layer around a random nn.Linear, and ours around a copy, with the same random
    A and B (B made non-zero so that the update is exercised)."""
    torch.manual_seed(seed)
    base = nn.Linear(d_in, d_out, bias=bias)
    host = nn.Sequential()
    host.add_module("proj", copy.deepcopy(base))
    config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=["proj"], lora_dropout=0.0)
    theirs = peft.inject_adapter_in_model(config, host).proj
    ours = LoRALinear(base, r=r, alpha=alpha)
    with torch.no_grad():
        theirs.lora_B["default"].weight.normal_()
        ours.lora_A.weight.copy_(theirs.lora_A["default"].weight)  # (r, d_in)
        ours.lora_B.weight.copy_(theirs.lora_B["default"].weight)  # (d_out, r)
    return theirs, ours


@settings(max_examples=25, deadline=None)
@given(
    d_in=st.integers(1, 24),
    d_out=st.integers(1, 24),
    r=st.integers(1, 8),
    alpha=st.sampled_from([1.0, 4.0, 16.0, 64.0]),
    bias=st.booleans(),
    lead=st.lists(st.integers(1, 4), min_size=0, max_size=2),
    seed=st.integers(0, 2**16),
)
def test_matches_peft_lora_layer(d_in, d_out, r, alpha, bias, lead, seed) -> None:
    theirs, ours = peft_and_ours(d_in, d_out, r, alpha, bias, seed)
    assert ours.scaling == theirs.scaling["default"] == alpha / r
    x = torch.randn(*lead, d_in)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), **ONE_LAYER)


def test_same_trainable_parameters_as_peft() -> None:
    theirs, ours = peft_and_ours(12, 7, 3, 6.0, True, seed=0)
    theirs_trainable = sorted(n for n, p in theirs.named_parameters() if p.requires_grad)
    ours_trainable = sorted(n for n, p in ours.named_parameters() if p.requires_grad)
    assert theirs_trainable == ["lora_A.default.weight", "lora_B.default.weight"]
    assert ours_trainable == ["lora_A.weight", "lora_B.weight"]
    assert count_parameters(ours) == (3 * 12 + 7 * 3, 3 * 12 + 7 * 3 + 12 * 7 + 7)


def test_initial_output_is_exactly_the_base_layer() -> None:
    torch.manual_seed(1)
    base = nn.Linear(16, 10)
    layer = LoRALinear(base, r=4, alpha=8.0)
    assert torch.count_nonzero(layer.lora_B.weight) == 0 and torch.count_nonzero(
        layer.lora_A.weight
    )
    x = torch.randn(3, 5, 16)
    with torch.no_grad():
        assert torch.equal(layer(x), base(x))  # B = 0: the update is exactly zero


def test_base_is_frozen_and_merge_gives_the_same_outputs() -> None:
    torch.manual_seed(2)
    base = nn.Linear(16, 10)
    layer = LoRALinear(base, r=4, alpha=8.0)
    assert not base.weight.requires_grad and not base.bias.requires_grad
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    merged = layer.merge()
    assert type(merged) is nn.Linear and merged.weight.requires_grad
    x = torch.randn(7, 16)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), layer(x), rtol=1e-5, atol=1e-5)
        expected = base.weight + 2.0 * layer.lora_B.weight @ layer.lora_A.weight  # alpha / r = 2
        torch.testing.assert_close(merged.weight, expected, rtol=0, atol=0)


def test_dropout_only_acts_in_training_mode() -> None:
    torch.manual_seed(3)
    layer = LoRALinear(nn.Linear(32, 8), r=4, alpha=4.0, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.weight.normal_()
    x = torch.randn(4, 32)
    layer.eval()
    plain = layer.base(x) + layer.scaling * layer.lora_B(layer.lora_A(x))
    torch.testing.assert_close(layer(x), plain, rtol=0, atol=0)
    layer.train()
    assert not torch.allclose(layer(x), plain)


def tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layers=2, n_heads=2, d_model=16))


def test_add_lora_wraps_chosen_layers_and_freezes_the_rest() -> None:
    model = tiny_gpt()
    wrapped = add_lora(model, ["q_proj", "v_proj"], r=2, alpha=4.0)
    assert wrapped == [f"blocks.{i}.attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [f"{w}.lora_{m}.weight" for w in wrapped for m in "AB"]
    assert count_parameters(model)[0] == 4 * (2 * 16 + 16 * 2)


def test_add_lora_matches_peft_on_a_whole_model() -> None:
    ours = tiny_gpt(seed=4)
    theirs = copy.deepcopy(ours)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "fc", "proj"]
    add_lora(ours, targets, r=3, alpha=6.0)
    config = peft.LoraConfig(r=3, lora_alpha=6.0, target_modules=targets, lora_dropout=0.0)
    theirs = peft.inject_adapter_in_model(config, theirs)
    assert {n for n, p in theirs.named_parameters() if p.requires_grad} == {
        n for n, p in theirs.named_parameters() if "lora_" in n
    }
    assert count_parameters(ours) == count_parameters(theirs)
    with torch.no_grad():
        for name, module in ours.named_modules():
            if isinstance(module, LoRALinear):
                peft_layer = theirs.get_submodule(name)
                peft_layer.lora_B["default"].weight.normal_()
                module.lora_A.weight.copy_(peft_layer.lora_A["default"].weight)
                module.lora_B.weight.copy_(peft_layer.lora_B["default"].weight)
        idx = torch.randint(0, 50, (2, 12))
        torch.testing.assert_close(ours(idx), theirs(idx), rtol=1e-5, atol=1e-5)


def test_training_changes_only_lora_and_merge_keeps_outputs() -> None:
    model = tiny_gpt(seed=5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    add_lora(model, ["q_proj", "k_proj", "v_proj", "o_proj", "fc", "proj"], r=2, alpha=4.0)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    idx = torch.randint(0, 50, (4, 16))
    losses = []
    for _ in range(20):
        loss = F.cross_entropy(model(idx[:, :-1]).flatten(0, 1), idx[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1
    after = dict(model.named_parameters())
    for name, old in before.items():  # every base weight, found under its wrapped name
        parts = name.rsplit(".", 1)
        wrapped = f"{parts[0]}.base.{parts[1]}"
        assert torch.equal(after[wrapped] if wrapped in after else after[name], old), name
    with torch.no_grad():
        lora_logits = model(idx)
        merge_lora(model)
        assert not any(isinstance(m, LoRALinear) for m in model.modules())
        torch.testing.assert_close(model(idx), lora_logits, rtol=1e-5, atol=1e-5)


def test_rank_must_be_positive() -> None:
    with pytest.raises(ValueError, match="rank"):
        LoRALinear(nn.Linear(4, 4), r=0, alpha=1.0)


def test_initialised_as_peft_initialises() -> None:
    """From the same random state, our A is peft's A bit for bit (Kaiming-uniform with a = sqrt(5),
    drawn after both layers are built), and B is zero in both."""
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    host = nn.Sequential()
    host.add_module("proj", copy.deepcopy(base))
    state = torch.get_rng_state()
    config = peft.LoraConfig(r=3, lora_alpha=6.0, target_modules=["proj"])
    theirs = peft.inject_adapter_in_model(config, host).proj
    torch.set_rng_state(state)
    ours = LoRALinear(base, r=3, alpha=6.0)
    assert torch.equal(ours.lora_A.weight, theirs.lora_A["default"].weight)
    assert torch.equal(ours.lora_B.weight, theirs.lora_B["default"].weight)
    assert not ours.lora_B.weight.any()


@pytest.mark.parametrize("bias", [True, False])
def test_merge_keeps_dtype_and_bias_and_returns_the_model(bias: bool) -> None:
    """A float64 layer without a bias merges into a float64 nn.Linear without a bias; merge_lora
    replaces the wrapped layers in place and returns the model it was given."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(16, 10, bias=bias).double())
    add_lora(model, ["0"], r=4, alpha=8.0)
    with torch.no_grad():
        model[0].lora_B.weight.normal_()
    x = torch.randn(3, 16, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
    assert merge_lora(model) is model
    merged = model[0]
    assert type(merged) is nn.Linear and merged.weight.dtype == torch.float64
    assert (merged.bias is not None) == bias
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-12, atol=1e-12)
