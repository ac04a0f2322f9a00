"""snippets.dpo against Eq. 7 of the DPO paper written out here, direct gathers, and trl's DPOTrainer."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from tolerances import FLOAT32

from snippets.dpo import binarize, dpo_loss, pack, sequence_logprobs, sft_loss
from snippets.gpt import GPT, GPTConfig, from_gpt2_state_dict

# float32 on CPU; sums of a few dozen log-probabilities.

logp = st.floats(min_value=-60.0, max_value=0.0, allow_nan=False, width=32)


def eq7(pc: float, pr: float, rc: float, rr: float, beta: float) -> float:
    """Eq. 7 of Rafailov et al. (2023) for one triple, in float64 scalar arithmetic:
    -log sigma(beta log pi(y_w)/pi_ref(y_w) - beta log pi(y_l)/pi_ref(y_l))."""
    z = beta * (pc - rc) - beta * (pr - rr)
    sigma = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
    return -math.log(sigma)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(logp, logp, logp, logp), min_size=1, max_size=8),
    st.sampled_from([0.01, 0.1, 0.5, 1.0]),
)
def test_dpo_loss_is_eq7(rows: list[tuple[float, float, float, float]], beta: float) -> None:
    pc, pr, rc, rr = (torch.tensor(col) for col in zip(*rows, strict=True))
    losses, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta)
    expected = torch.tensor([eq7(*row, beta) for row in rows])
    torch.testing.assert_close(losses, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chosen_rewards, beta * (pc - rc))  # implicit rewards
    torch.testing.assert_close(rejected_rewards, beta * (pr - rr))
    assert losses.shape == (len(rows),) and (losses > 0).all()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(logp, logp), min_size=1, max_size=8), st.sampled_from([0.1, 0.5]))
def test_ln2_when_policy_is_reference(rows: list[tuple[float, float]], beta: float) -> None:
    chosen, rejected = (torch.tensor(col) for col in zip(*rows, strict=True))
    losses, chosen_rewards, rejected_rewards = dpo_loss(chosen, rejected, chosen, rejected, beta)
    torch.testing.assert_close(losses, torch.full_like(losses, math.log(2)))
    assert (chosen_rewards == 0).all() and (rejected_rewards == 0).all()


def test_gradient_raises_chosen_and_lowers_rejected() -> None:
    # DPO paper, Section 4 ("What does the DPO update do?"): the gradient is
    # -beta sigma(r_l - r_w) [grad log pi(y_w) - grad log pi(y_l)].
    torch.manual_seed(0)
    beta = 0.1
    pc, pr = (-20 * torch.rand(6)).requires_grad_(), (-20 * torch.rand(6)).requires_grad_()
    rc, rr = -20 * torch.rand(6), -20 * torch.rand(6)
    losses, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc, rr, beta)
    losses.sum().backward()
    weight = beta * torch.sigmoid(rejected_rewards - chosen_rewards)  # (6,)
    torch.testing.assert_close(pc.grad, -weight)  # descent raises log pi(y_w) ...
    torch.testing.assert_close(pr.grad, weight)  # ... and lowers log pi(y_l)
    assert (pc.grad < 0).all() and (pr.grad > 0).all()
    assert not chosen_rewards.requires_grad and not rejected_rewards.requires_grad  # for logging


def test_a_step_on_a_network_widens_the_gap() -> None:
    torch.manual_seed(0)
    policy = GPT(GPTConfig(vocab_size=11, block_size=12, n_layers=1, n_heads=2, d_model=16))
    reference = GPT(policy.cfg)
    reference.load_state_dict(policy.state_dict())
    prompts = [[1, 2, 3], [4, 5]]
    chosen, c_mask = pack(prompts, [[6, 7, 0], [8, 0]], pad_id=10)
    rejected, r_mask = pack(prompts, [[9, 0], [6, 6, 6, 0]], pad_id=10)

    def gap(model: GPT) -> torch.Tensor:
        return sequence_logprobs(model(chosen), chosen, c_mask) - sequence_logprobs(
            model(rejected), rejected, r_mask
        )

    with torch.no_grad():
        ref_c = sequence_logprobs(reference(chosen), chosen, c_mask)
        ref_r = sequence_logprobs(reference(rejected), rejected, r_mask)
        before = gap(policy)
    pc = sequence_logprobs(policy(chosen), chosen, c_mask)
    pr = sequence_logprobs(policy(rejected), rejected, r_mask)
    losses, _, _ = dpo_loss(pc, pr, ref_c, ref_r, beta=0.1)
    torch.testing.assert_close(losses, torch.full_like(losses, math.log(2)))
    losses.mean().backward()
    with torch.no_grad():
        for p in policy.parameters():
            p -= 0.5 * p.grad
        after = gap(policy)
    assert (after > before).all()


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=5
    ),  # (prompt length, response length) per row
    st.integers(0, 2**31 - 1),
)
def test_sequence_logprobs_is_a_gather_over_response_tokens(
    lengths: list[tuple[int, int]], seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    V, pad = 7, 6
    prompts = [torch.randint(0, 6, (n,), generator=g).tolist() for n, _ in lengths]
    responses = [torch.randint(0, 6, (m,), generator=g).tolist() for _, m in lengths]
    ids, mask = pack(prompts, responses, pad_id=pad)
    logits = torch.randn(ids.shape + (V,), generator=g)
    ours = sequence_logprobs(logits, ids, mask)
    for b, (n, m) in enumerate(lengths):
        # Response token t (position n + t) is predicted by the logits at position n + t - 1.
        direct = sum(logits[b, n + t - 1].log_softmax(-1)[responses[b][t]] for t in range(m))
        torch.testing.assert_close(ours[b], torch.as_tensor(direct), **FLOAT32)
    # Prompt and padding are excluded: their predictions may change without changing the result.
    predicts_response = torch.zeros_like(mask)
    predicts_response[:, :-1] = mask[:, 1:]  # logits at t predict token t + 1
    noisy = torch.where(predicts_response[..., None], logits, logits + 5 * torch.randn_like(logits))
    torch.testing.assert_close(sequence_logprobs(noisy, ids, mask), ours, **FLOAT32)


def test_pack_right_pads_and_marks_responses() -> None:
    ids, mask = pack([[1, 2], [3]], [[4], [5, 6, 7]], pad_id=0)
    assert ids.tolist() == [[1, 2, 4, 0], [3, 5, 6, 7]]
    assert mask.tolist() == [[False, False, True, False], [False, True, True, True]]


def test_sft_loss_is_cross_entropy_on_response_tokens() -> None:
    torch.manual_seed(0)
    ids, mask = pack([[1, 2, 3], [4]], [[5, 6], [7, 8, 9]], pad_id=0)
    logits = torch.randn(*ids.shape, 10)
    labels = ids.masked_fill(~mask, -100)  # prompt and padding ignored
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten())
    torch.testing.assert_close(sft_loss(logits, ids, mask), expected)


def test_binarize_best_and_a_random_lower_one() -> None:
    responses = [[1], [2], [3], [4]]
    ratings = [[3, 4], [5, 5], [1, 2], [4, 4]]  # means 3.5, 5, 1.5, 4
    g = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(600):
        pair = binarize([0], responses, ratings, g)
        assert pair.chosen == (2,) and pair.chosen_score == 5
        assert pair.rejected_score < pair.chosen_score
        seen.append(pair.rejected[0])
    for r in (1, 3, 4):  # each lower response, not only the worst (3)
        assert abs(seen.count(r) / 600 - 1 / 3) < 0.07
    assert binarize([0], [[1], [2]], [[4, 4], [4, 4]], g) is None  # all tied: no preference
    tied_best = binarize([0], [[1], [2], [3]], [[5], [5], [1]], g)
    assert tied_best.chosen == (1,) and tied_best.rejected == (3,)  # a tie is never the rejected


def test_matches_trl_sigmoid_dpo_loss(tmp_path, monkeypatch) -> None:
    """Our pipeline (our GPT with copied weights, sequence_logprobs, dpo_loss) against trl's
    DPOTrainer computing its default 'sigmoid' loss on the batch its own collator builds."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    trl = pytest.importorskip("trl", reason="trl is not installed")
    datasets = pytest.importorskip("datasets", reason="datasets (a trl dependency) is missing")
    tokenizers = pytest.importorskip("tokenizers", reason="tokenizers is missing")
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    # A word-level tokenizer built in memory: nothing to download.
    vocab = {f"t{i}": i for i in range(30)} | {"<pad>": 30, "<eos>": 31}
    word_level = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<pad>"))
    word_level.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, pad_token="<pad>", eos_token="<eos>"
    )
    torch.manual_seed(0)
    hf_cfg = GPT2Config(
        vocab_size=32, n_positions=16, n_embd=16, n_layer=2, n_head=2, resid_pdrop=0.0,
        embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=31, eos_token_id=31, pad_token_id=30,
    )  # fmt: skip
    policy, reference = GPT2LMHeadModel(hf_cfg), GPT2LMHeadModel(hf_cfg)
    data = datasets.Dataset.from_dict(
        {
            "prompt": ["t1 t2 t3", "t4", "t5 t6"],
            "chosen": [" t7 t8", " t9 t10 t11", " t12"],
            "rejected": [" t13", " t14 t15", " t16 t17 t18 t19"],
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers' deprecation notices about trl's defaults
        args = trl.DPOConfig(
            output_dir=str(tmp_path), beta=0.1, per_device_train_batch_size=3, report_to="none",
            use_cpu=True, save_strategy="no", logging_strategy="no",
            bf16=False,  # trl's default; it would run the reference model under bfloat16 autocast
        )  # fmt: skip
        try:
            trainer = trl.DPOTrainer(
                model=policy, ref_model=reference, args=args, train_dataset=data,
                processing_class=tokenizer,
            )  # fmt: skip
        except OSError as err:  # a Hub lookup that cannot be made offline
            pytest.skip(f"trl's DPOTrainer could not be built offline: {err}")
        assert trainer.loss_types == ["sigmoid"]
        batch = next(iter(trainer.get_train_dataloader()))  # rows: 3 chosen, then 3 rejected

        cfg = GPTConfig(vocab_size=32, block_size=16, n_layers=2, n_heads=2, d_model=16)
        ours_policy = from_gpt2_state_dict(policy.state_dict(), cfg).eval()
        ours_reference = from_gpt2_state_dict(reference.state_dict(), cfg).eval()
        ids, mask = batch["input_ids"], batch["completion_mask"].bool()  # mask: response tokens
        with torch.no_grad():
            logps = sequence_logprobs(ours_policy(ids), ids, mask)  # (6,)
            ref_logps = sequence_logprobs(ours_reference(ids), ids, mask)  # (6,)
        losses, chosen_rewards, rejected_rewards = dpo_loss(
            *logps.chunk(2), *ref_logps.chunk(2), 0.1
        )

        for i in range(3):  # trl averages over its batch: one pair at a time gives each loss
            one = {k: v[[i, i + 3]] for k, v in batch.items()}
            with torch.no_grad():
                loss = trainer.compute_loss(trainer.model, one)
            metrics = trainer._metrics["train" if trainer.model.training else "eval"]
            torch.testing.assert_close(loss, losses[i], **FLOAT32)
            torch.testing.assert_close(metrics["logps/chosen"][-1], logps[i].item(), **FLOAT32)
            torch.testing.assert_close(
                metrics["logps/rejected"][-1], logps[i + 3].item(), **FLOAT32
            )
            torch.testing.assert_close(
                metrics["rewards/chosen"][-1], chosen_rewards[i].item(), **FLOAT32
            )
            torch.testing.assert_close(
                metrics["rewards/rejected"][-1], rejected_rewards[i].item(), **FLOAT32
            )
    assert not torch.allclose(losses, torch.full_like(losses, math.log(2)))  # distinct models


def test_pack_refuses_unpaired_prompts_and_responses() -> None:
    with pytest.raises(ValueError):
        pack([[1], [2]], [[3]], pad_id=0)


def test_default_beta_is_zephyrs() -> None:
    """Zephyr's dDPO uses beta = 0.1 (Tunstall et al., Section 4), the default of dpo_loss."""
    g = torch.Generator().manual_seed(0)
    logps = [torch.randn(5, generator=g) * 10 for _ in range(4)]
    default = dpo_loss(*logps)
    for got, expected in zip(default, dpo_loss(*logps, beta=0.1), strict=True):
        assert torch.equal(got, expected)
    assert not torch.allclose(default[0], dpo_loss(*logps, beta=0.15)[0])


def test_binarize_draws_from_its_generator_only() -> None:
    """Given a generator, the rejected response depends on it alone, not on the global RNG."""
    responses, ratings = [[1], [2], [3], [4]], [[3], [5], [1], [4]]  # three lower than the best
    picks = set()
    for seed in range(6):
        per_seed = set()
        for global_seed in range(3):
            torch.manual_seed(global_seed)
            pair = binarize([0], responses, ratings, torch.Generator().manual_seed(seed))
            per_seed.add(pair.rejected)
        assert len(per_seed) == 1
        picks |= per_seed
    assert len(picks) > 1  # the generator's seed does choose among the lower ones
