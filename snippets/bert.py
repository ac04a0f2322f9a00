"""BERT: a bidirectional Transformer encoder, pre-trained with masked LM and next-sentence prediction.

Devlin, Chang, Lee and Toutanova, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding", 2018, arXiv:1810.04805. The paper calls the number of layers L, the hidden size H and
the number of heads A; here they are ``n_layers``, ``d_model`` and ``n_heads``. The pooler (tanh on
the [CLS] output) and the layout of the pre-training heads follow the authors' released code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from snippets.attention import MultiHeadAttention


@dataclass
class BertConfig:
    """Defaults are BERT-base (L=12, H=768, A=12) with the 30,522-piece uncased WordPiece vocabulary."""

    vocab_size: int = 30522
    d_model: int = 768  # H
    n_layers: int = 12  # L
    n_heads: int = 12  # A
    d_ff: int = 3072  # 4H
    max_position: int = 512  # rows of the learned position table: the longest input
    type_vocab_size: int = 2  # segment A and segment B
    dropout: float = 0.1
    layer_norm_eps: float = 1e-12

    @classmethod
    def base(cls) -> BertConfig:
        return cls()

    @classmethod
    def large(cls) -> BertConfig:
        """BERT-large: L=24, H=1024, A=16."""
        return cls(d_model=1024, n_layers=24, n_heads=16, d_ff=4096)


def init_bert_weights(module: nn.Module) -> None:
    """Normal(0, 0.02) weights, zero biases, LayerNorm at identity (the released code's initialiser)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)
    if isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters; a tied weight (MLM decoder = token embedding) is counted once."""
    return sum(p.numel() for p in module.parameters())


# --8<-- [start:embeddings]
class BertEmbeddings(nn.Module):
    """Input representation (Figure 2 of the paper): token + segment + position, then LayerNorm."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)  # one row per WordPiece token
        self.seg = nn.Embedding(cfg.type_vocab_size, cfg.d_model)  # E_A, E_B
        # Learned like the others, one row per position: not the sinusoids of Vaswani et al.
        self.pos = nn.Embedding(cfg.max_position, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        """input_ids, token_type_ids (B, L) -> (B, L, d_model)."""
        L = input_ids.size(1)
        if L > self.pos.num_embeddings:
            raise ValueError(f"{L} tokens exceed the {self.pos.num_embeddings} learned positions")
        positions = torch.arange(L, device=input_ids.device)  # (L,)
        x = self.tok(input_ids) + self.seg(token_type_ids) + self.pos(positions)  # (B, L, d_model)
        return self.dropout(self.norm(x))


# --8<-- [end:embeddings]


# --8<-- [start:layer]
class BertLayer(nn.Module):
    """One encoder layer: the post-LN layer of Vaswani et al. (Section 3.1), with GELU in the FFN.

    x <- LayerNorm(x + MultiHead(x, x, x)); x <- LayerNorm(x + W2 GELU(W1 x + b1) + b2).
    Changed from the original Transformer layer: GELU (Hendrycks and Gimpel, arXiv:1606.08415)
    instead of ReLU, and LayerNorm eps 1e-12. No causal mask and no cross-attention: BERT is an
    encoder only.
    """

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, dropout=cfg.dropout)
        self.attn_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.ff_in = nn.Linear(cfg.d_model, cfg.d_ff)  # W1: H -> 4H
        self.ff_out = nn.Linear(cfg.d_ff, cfg.d_model)  # W2: 4H -> H
        self.ff_norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, L, d_model); ``mask`` bool, broadcastable to (B, n_heads, L, L), True = may attend."""
        x = self.attn_norm(x + self.dropout(self.attn(x, mask=mask)))  # (B, L, d_model)
        h = F.gelu(self.ff_in(x))  # (B, L, d_ff)  CHANGED: GELU, not ReLU
        return self.ff_norm(x + self.dropout(self.ff_out(h)))  # (B, L, d_model)


# --8<-- [end:layer]


# --8<-- [start:model]
class BertModel(nn.Module):
    """Embeddings, a stack of L encoder layers, and the pooler on the first ([CLS]) position."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.n_layers))
        self.pooler = nn.Linear(cfg.d_model, cfg.d_model)
        self.apply(init_bert_weights)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids (B, L); token_type_ids (B, L), default all segment A; attention_mask (B, L),
        1 for real tokens and 0 for padding, default all real.
        Returns (hidden states (B, L, d_model), pooled [CLS] output (B, d_model)).
        """
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)  # (B, L, d_model)
        # Padding mask only: a query may attend to every real key, left or right of it.
        # No causal mask: this is what makes every layer bidirectional.
        mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)  # (B, L, d_model); mask (B, 1, 1, L) broadcasts over heads, queries
        pooled = torch.tanh(self.pooler(x[:, 0]))  # (B, d_model): tanh(W C + b), C = h_[CLS]
        return x, pooled


# --8<-- [end:model]


# --8<-- [start:heads]
class MaskedLMHead(nn.Module):
    """Predicts the original token at every position: dense + GELU + LayerNorm, then a decoder
    whose weight is the token embedding table (tied), plus a per-token bias."""

    def __init__(self, cfg: BertConfig, token_embedding: nn.Embedding) -> None:
        super().__init__()
        self.transform = nn.Linear(cfg.d_model, cfg.d_model)
        self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.decoder = nn.Linear(cfg.d_model, cfg.vocab_size)  # weight replaced by the tied table
        self.decoder.weight = token_embedding.weight  # (vocab_size, d_model), shared

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, L, d_model) -> logits over the vocabulary (B, L, vocab_size)."""
        return self.decoder(self.norm(F.gelu(self.transform(hidden))))


class BertForPreTraining(nn.Module):
    """BERT with its two pre-training heads: masked LM on every position, NSP on the pooled [CLS]."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.bert = BertModel(cfg)
        self.mlm = MaskedLMHead(cfg, self.bert.embeddings.tok)
        self.nsp = nn.Linear(cfg.d_model, 2)  # IsNext (0) / NotNext (1)
        self.mlm.apply(init_bert_weights)
        self.nsp.apply(init_bert_weights)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (MLM logits (B, L, vocab_size), NSP logits (B, 2))."""
        hidden, pooled = self.bert(input_ids, token_type_ids, attention_mask)
        return self.mlm(hidden), self.nsp(pooled)


def pretraining_loss(
    mlm_logits: torch.Tensor,
    mlm_labels: torch.Tensor,
    nsp_logits: torch.Tensor,
    nsp_labels: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked-LM loss, NSP loss); pre-training minimises their sum (Appendix A.2).

    The masked-LM loss is the mean cross-entropy over the selected tokens only (labels != -100).
    """
    mlm = F.cross_entropy(mlm_logits.flatten(0, 1), mlm_labels.flatten(), ignore_index=-100)
    return mlm, F.cross_entropy(nsp_logits, nsp_labels)


# --8<-- [end:heads]


# --8<-- [start:classifier]
class BertClassifier(nn.Module):
    """Fine-tuning for classification (Section 3.2): the pre-trained encoder plus one new layer W
    (K x H) on the pooled [CLS] output; every parameter, old and new, is trained for the task."""

    def __init__(self, bert: BertModel, n_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.bert = bert
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(bert.cfg.d_model, n_classes)
        self.head.apply(init_bert_weights)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Returns class logits (B, n_classes); softmax(C W^T) gives the class probabilities."""
        _, pooled = self.bert(input_ids, token_type_ids, attention_mask)  # (B, d_model)
        return self.head(self.dropout(pooled))


# --8<-- [end:classifier]


# --8<-- [start:inputs]
class BertInputs(NamedTuple):
    """A padded batch, each tensor (B, L)."""

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor  # 0 for [CLS] A [SEP], 1 for B [SEP], 0 for padding
    attention_mask: torch.Tensor  # 1 for real tokens, 0 for padding
    special_tokens_mask: torch.Tensor  # 1 for [CLS], [SEP] and padding: never masked for MLM

    def to(self, device: torch.device | str) -> BertInputs:
        return BertInputs(*(t.to(device) for t in self))


def build_inputs(
    pairs: Sequence[tuple[Sequence[int], Sequence[int] | None]],
    cls_id: int,
    sep_id: int,
    pad_id: int,
    max_length: int | None = None,
) -> BertInputs:
    """Lay out each (A, B) pair of token-id lists as ``[CLS] A [SEP] B [SEP]`` (``[CLS] A [SEP]``
    when B is None) and pad the batch to ``max_length`` (default: the longest sequence)."""
    rows = []
    for a, b in pairs:
        ids = [cls_id, *a, sep_id]
        types = [0] * len(ids)
        special = [1, *([0] * len(a)), 1]
        if b is not None:
            ids += [*b, sep_id]
            types += [1] * (len(b) + 1)
            special += [*([0] * len(b)), 1]
        rows.append((ids, types, special))
    longest = max(len(ids) for ids, _, _ in rows)
    L = longest if max_length is None else max_length
    if longest > L:
        raise ValueError(f"a sequence of {longest} tokens does not fit max_length={L}")
    batch = [
        (
            ids + [pad_id] * (L - len(ids)),
            types + [0] * (L - len(ids)),
            [1] * len(ids) + [0] * (L - len(ids)),
            special + [1] * (L - len(ids)),
        )
        for ids, types, special in rows
    ]
    return BertInputs(*(torch.tensor(column) for column in zip(*batch, strict=True)))  # each (B, L)


# --8<-- [end:inputs]


# --8<-- [start:wordpiece]
def wordpiece(
    word: str, vocab: Mapping[str, int], unk: str = "[UNK]", max_chars: int = 100
) -> list[str]:
    """Split one (lower-cased, punctuation-free) word into WordPiece tokens, greedily: take the
    longest prefix in ``vocab``, then the longest ``##``-continuation of the rest, and so on.
    A word with no such split becomes ``unk`` (default ``[UNK]``)."""
    if len(word) > max_chars:
        return [unk]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:  # not even one character matched
            return [unk]
        pieces.append(piece)
        start = end
    return pieces


# --8<-- [end:wordpiece]


# --8<-- [start:mask_tokens]
def mask_tokens(
    input_ids: torch.Tensor,
    mask_token_id: int,
    vocab_size: int,
    special_tokens_mask: torch.Tensor | None = None,
    mlm_probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Corrupt a batch for the masked-LM objective (Section 3.1, "Task #1: Masked LM").

    Each token that is not special is selected with probability ``mlm_probability``. A selected
    token becomes [MASK] with probability 0.8, a uniformly random token with probability 0.1, and
    stays unchanged with probability 0.1. Returns (inputs, labels), both shaped like input_ids:
    labels hold the original id where a token was selected and -100 (ignored by the loss)
    elsewhere. ``input_ids`` is not modified. Random draws use ``generator`` (a CPU generator).
    """
    shape = input_ids.shape  # (B, L)
    select_prob = torch.full(shape, mlm_probability)  # (B, L)
    if special_tokens_mask is not None:
        select_prob.masked_fill_(special_tokens_mask.bool().cpu(), 0.0)  # [CLS], [SEP], padding
    selected = torch.bernoulli(select_prob, generator=generator).bool()  # (B, L)
    fate = torch.rand(shape, generator=generator)  # one uniform draw decides 80 / 10 / 10
    to_mask = selected & (fate < 0.8)
    to_random = selected & (fate >= 0.8) & (fate < 0.9)  # the remaining 10% stay unchanged
    random_ids = torch.randint(vocab_size, shape, generator=generator)  # (B, L)

    device = input_ids.device
    selected, to_mask, to_random = selected.to(device), to_mask.to(device), to_random.to(device)
    inputs = input_ids.clone()
    inputs[to_mask] = mask_token_id
    inputs[to_random] = random_ids.to(device)[to_random]
    labels = input_ids.masked_fill(~selected, -100)  # predict only the selected tokens
    return inputs, labels


# --8<-- [end:mask_tokens]
