"""Tiny random-initialised reference models shared by the cross-checks (a helper module, not tests).

transformers is optional: a test module that needs it calls ``pytest.importorskip`` first, so its
tests are skipped with a visible reason when it is absent.
"""

from __future__ import annotations

import torch

from snippets.gpt import GPT, GPTConfig, from_gpt2_state_dict


def tiny_gpt2_pair(
    seed: int = 0,
    vocab_size: int = 61,
    d_model: int = 48,
    eos_id: int = 0,
    init_std: float = 0.02,
):
    """A random tiny GPT-2 (``transformers.GPT2LMHeadModel``) and our GPT with the same weights.

    ``init_std`` above GPT-2's 0.02 gives peaked next-token distributions (beam search needs them)."""
    import transformers

    torch.manual_seed(seed)
    hf_cfg = transformers.GPT2Config(
        vocab_size=vocab_size,
        n_positions=32,
        n_embd=d_model,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        initializer_range=init_std,
        bos_token_id=0,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    cfg = GPTConfig(vocab_size=vocab_size, block_size=32, n_layers=2, n_heads=4, d_model=d_model)
    ours: GPT = from_gpt2_state_dict(hf.state_dict(), cfg).eval()
    return hf, ours
