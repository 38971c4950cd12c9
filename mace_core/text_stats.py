"""Text-side sufficient statistics for CFR and fusion (spec section 3.2; Stage C caches; Stages E and G).

CFR and fusion are exact functions of d x d float64 matrices computed from the frozen text encoder alone:

- per concept k (Stage E inputs): ``A_k = sum_pairs sum_(i,j) E'_j E_i^T`` and ``B_k = sum_pairs sum_i E_i E_i^T``
  over the matched token pairs of spec Stage E (``i`` in the erased prompt, ``j`` in the mapping prompt);
- per concept k (Stage G inputs): ``G_k = sum over all L tokens of k's erased prompts of e e^T``, and its part
  ``G_k^c`` over the tokens from the concept phrase on (phrase, suffix words, EOS, padding): the tokens before the
  phrase are the same in every prompt sharing that prefix (causal text encoder), see ``fuse`` ``lora_tokens``;
- global priors (Stage C): ``P = Gram(caption tokens)`` (COCO) and ``D = Gram(domain prompts)``.

The official code instead materialises ``W0^l E'`` for all 32 projections (~0.23 GB per concept) and stores 32
copies of ``P`` plus ``W0 P``; one d x d matrix per statistic is equivalent (spec 3.2) and additive over
concepts, which makes adding a concept exact and cheap (``ConceptStats.__add__``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

STATS_DTYPE = torch.float64


def _check_finite(name: str, x: torch.Tensor) -> None:
    """One-line ValueError if ``x`` has NaN/Inf (a broken encoder or fp16 overflow must not reach a solve)."""
    if not torch.isfinite(x).all():
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{name} has {n_bad} non-finite values: check the text encoder outputs (run it in float32)"
        )


class GramAccumulator:
    """Streaming float64 Gram ``sum_x x x^T`` with its vector count (spec Stage C; MEMIT-style second moment).

    ``update`` accepts any ``[..., d]`` tensor (e.g. ``[N, L, d]`` embeddings); rows are flattened and accumulated
    in float64. ``state_dict``/``load_state_dict`` allow a long prior pass (e.g. 617k COCO captions) to be
    resumed in chunks; chunked and one-shot accumulation agree to float64 rounding.

    Args:
        d: feature width (768 SD 1.x, 1024 SD 2.x, 2048 SDXL).
    """

    def __init__(self, d: int) -> None:
        if not isinstance(d, int) or isinstance(d, bool) or d < 1:
            raise ValueError(f"d={d!r}: expected a positive int feature width such as 768")
        self.d = d
        self._gram = torch.zeros(d, d, dtype=STATS_DTYPE)
        self._count = 0

    @property
    def gram(self) -> torch.Tensor:
        """The accumulated ``[d, d]`` float64 Gram (a copy; the accumulator stays private)."""
        return self._gram.clone()

    @property
    def count(self) -> int:
        """Number of d-vectors accumulated so far."""
        return self._count

    def update(self, x: torch.Tensor) -> None:
        """Add ``sum_rows x x^T`` for ``x`` of shape ``[..., d]`` (any float dtype; accumulated in float64)."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor of shape [..., {self.d}], got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.d:
            raise ValueError(f"x has shape {tuple(x.shape)}: expected [..., {self.d}] (last dim = d)")
        rows = x.detach().reshape(-1, self.d).to(device="cpu", dtype=STATS_DTYPE)
        _check_finite("GramAccumulator.update input", rows)
        self._gram += rows.T @ rows
        self._count += rows.shape[0]

    def state_dict(self) -> dict[str, Any]:
        """Serialisable state: ``{"d": int, "count": int, "gram": Tensor[d, d] float64}`` (copies)."""
        return {"d": self.d, "count": self._count, "gram": self._gram.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state produced by ``state_dict`` (validates width, dtype-casts to float64)."""
        missing = {"d", "count", "gram"} - set(state)
        if missing:
            raise ValueError(f"state is missing keys {sorted(missing)}: pass the dict from state_dict()")
        if int(state["d"]) != self.d or tuple(state["gram"].shape) != (self.d, self.d):
            raise ValueError(
                f"state has d={state['d']} / gram {tuple(state['gram'].shape)}, expected d={self.d}: "
                "load it into GramAccumulator(d) with the same width"
            )
        gram = state["gram"].detach().to(device="cpu", dtype=STATS_DTYPE).clone()
        _check_finite("GramAccumulator state gram", gram)
        self._gram = gram
        self._count = int(state["count"])


@dataclass(frozen=True)
class ConceptStats:
    """Per-concept (or summed) sufficient statistics, all ``[d, d]`` float64 (spec 3.2).

    Attributes:
        A: ``sum E'_j E_i^T`` over matched pairs (mapping embedding times erased embedding transposed).
        B: ``sum E_i E_i^T`` over matched erased tokens.
        G: ``sum e e^T`` over all L tokens of the erased prompts (fusion inputs).
        G_concept: the part of ``G`` over the tokens from the first concept-phrase token on (``G`` minus the
            prefix before the phrase); the fusion's LoRA targets with ``lora_tokens="concept"``.
        n_pairs: number of prompt pairs.
        n_matched: number of matched token pairs (rows of the CFR system).
        n_tokens: number of tokens in G (n_pairs * L).
    """

    A: torch.Tensor
    B: torch.Tensor
    G: torch.Tensor
    G_concept: torch.Tensor
    n_pairs: int
    n_matched: int
    n_tokens: int

    def __post_init__(self) -> None:
        d = self.A.shape[0] if self.A.dim() == 2 else -1
        for name in ("A", "B", "G", "G_concept"):
            t = getattr(self, name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != (d, d) or d < 1:
                raise ValueError(f"ConceptStats.{name} has shape {tuple(getattr(t, 'shape', ()))}: expected [d, d]")
            if t.dtype != STATS_DTYPE:
                raise TypeError(f"ConceptStats.{name} has dtype {t.dtype}: expected torch.float64")

    @property
    def d(self) -> int:
        return self.A.shape[0]

    @classmethod
    def zeros(cls, d: int) -> ConceptStats:
        """The additive identity for width ``d``."""
        z = torch.zeros(d, d, dtype=STATS_DTYPE)
        return cls(z, z.clone(), z.clone(), z.clone(), 0, 0, 0)

    def __add__(self, other: ConceptStats) -> ConceptStats:
        """Statistics of the union of two disjoint concept sets (exact: all terms are sums)."""
        if not isinstance(other, ConceptStats):
            return NotImplemented
        if other.d != self.d:
            raise ValueError(f"cannot add ConceptStats of width {self.d} and {other.d}: use one text encoder")
        return ConceptStats(
            self.A + other.A,
            self.B + other.B,
            self.G + other.G,
            self.G_concept + other.G_concept,
            self.n_pairs + other.n_pairs,
            self.n_matched + other.n_matched,
            self.n_tokens + other.n_tokens,
        )

    def __radd__(self, other: object) -> ConceptStats:
        # lets ``sum(list_of_stats)`` work (sum starts from 0)
        if other == 0:
            return self
        return NotImplemented


def concept_statistics(
    erased_emb: torch.Tensor,
    mapping_emb: torch.Tensor,
    matches: Sequence[tuple[Sequence[int], Sequence[int]]],
) -> ConceptStats:
    """A_k, B_k, G_k of one concept from its prompt embeddings (spec 3.2, Stage E step 4, Stage G).

    Args:
        erased_emb: ``[N, L, d]`` text-encoder outputs of the N erased prompts (any float dtype).
        mapping_emb: ``[N, L, d]`` outputs of the N mapping prompts (same order).
        matches: N pairs ``(erased_positions, mapping_positions)`` from ``prompts.match_token_indices``.

    Returns:
        ConceptStats with ``A = sum E'_j E_i^T``, ``B = sum E_i E_i^T`` over matched pairs and
        ``G = sum`` over all ``L`` tokens of the erased prompts and ``G_concept`` over those from the first
        unmatched (concept-phrase) position on, all float64.
    """
    # 1. validate shapes and values
    for name, t in (("erased_emb", erased_emb), ("mapping_emb", mapping_emb)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3:
            raise ValueError(f"{name} has shape {tuple(getattr(t, 'shape', ()))}: expected [N, L, d]")
    if erased_emb.shape != mapping_emb.shape:
        raise ValueError(
            f"erased_emb {tuple(erased_emb.shape)} and mapping_emb {tuple(mapping_emb.shape)} differ: "
            "encode both prompt lists with the same encoder and padding"
        )
    n, length, d = erased_emb.shape
    if len(matches) != n:
        raise ValueError(f"matches has {len(matches)} entries for {n} prompt pairs: give one per pair")
    e = erased_emb.detach().to(device="cpu", dtype=STATS_DTYPE)
    e_map = mapping_emb.detach().to(device="cpu", dtype=STATS_DTYPE)
    _check_finite("erased_emb", e)
    _check_finite("mapping_emb", e_map)
    # 2. gather matched rows of every pair: X = E_i (inputs), Y = E'_j (mapping-side inputs)
    xs, ys, concept_part = [], [], []
    for k, (i_idx, j_idx) in enumerate(matches):
        if len(i_idx) != len(j_idx):
            raise ValueError(f"matches[{k}] has {len(i_idx)} erased vs {len(j_idx)} mapping positions: must be equal")
        i_t = torch.as_tensor(list(i_idx), dtype=torch.long)
        j_t = torch.as_tensor(list(j_idx), dtype=torch.long)
        if len(i_t) and not (0 <= min(int(i_t.min()), int(j_t.min()))
                             and max(int(i_t.max()), int(j_t.max())) < length):
            raise ValueError(f"matches[{k}] has positions outside [0, {length}): recompute them with this tokenizer")
        xs.append(e[k, i_t])
        ys.append(e_map[k, j_t])
        # the phrase starts at the first erased position the matching left out (the matched prefix ends there)
        matched = set(i_t.tolist())
        start = next((i for i in range(length) if i not in matched), length)
        concept_part.append(e[k, start:])
    x = torch.cat(xs) if xs else torch.zeros(0, d, dtype=STATS_DTYPE)
    y = torch.cat(ys) if ys else torch.zeros(0, d, dtype=STATS_DTYPE)
    # 3. A = Y^T X, B = X^T X, G = Gram of all erased tokens, G_concept = Gram of those from the phrase on
    all_tokens = e.reshape(-1, d)
    concept_tokens = torch.cat(concept_part)
    return ConceptStats(
        A=y.T @ x,
        B=x.T @ x,
        G=all_tokens.T @ all_tokens,
        G_concept=concept_tokens.T @ concept_tokens,
        n_pairs=n,
        n_matched=x.shape[0],
        n_tokens=all_tokens.shape[0],
    )


def concept_statistics_from_pipeline(pipe: Any, pairs: Sequence[Any], batch_size: int = 32) -> ConceptStats:
    """Encode a concept's prompt pairs with the pipeline's text encoder(s) and return its ConceptStats.

    Token matching must agree for every tokenizer of the pipeline (SDXL has two with identical BPE but
    different pad tokens); a disagreement raises rather than silently mixing positions.

    Args:
        pipe: a diffusers pipeline (loaded with ``mace_core.models.load_pipeline``).
        pairs: ``prompts.PromptPair`` list of one concept.
        batch_size: prompts per text-encoder batch.
    """
    from mace_core import models  # lazy: keeps this module importable without diffusers models loaded
    from mace_core.prompts import match_token_indices

    # 1. token matching per pair, checked against every tokenizer
    if not pairs:
        raise ValueError("pairs is empty: pass the concept's PromptPair list (template_prompt_pairs)")
    tokenizers = models.tokenizers_of(pipe)
    matches = []
    for pair in pairs:
        per_tok = [match_token_indices(tok, pair.erased, pair.mapping, pair.target) for tok in tokenizers]
        if any(m != per_tok[0] for m in per_tok[1:]):
            raise ValueError(
                f"tokenizers of the pipeline disagree on token matching for {pair.erased!r}: "
                "they must share one BPE vocabulary"
            )
        matches.append(per_tok[0])
    # 2. encode both sides exactly as the pipeline conditions the UNet
    erased_emb = models.encode_prompts(pipe, [p.erased for p in pairs], batch_size)
    mapping_emb = models.encode_prompts(pipe, [p.mapping for p in pairs], batch_size)
    # 3. statistics
    stats = concept_statistics(erased_emb, mapping_emb, matches)
    logger.debug("concept stats: %d pairs, %d matched tokens", stats.n_pairs, stats.n_matched)
    return stats


def prior_gram(
    pipe: Any,
    captions: Iterable[str],
    batch_size: int = 256,
    accumulator: GramAccumulator | None = None,
) -> GramAccumulator:
    """Gram of all L token embeddings of ``captions`` (spec Stage C: P from COCO, D from domain prompts).

    Streams ``captions`` in batches; pass the ``accumulator`` of an earlier chunk to continue it (the input
    accumulator is not mutated: a new one with the summed state is returned).

    Args:
        pipe: a diffusers pipeline.
        captions: any iterable of strings (consumed once).
        batch_size: captions per text-encoder batch.
        accumulator: optional state to resume from.

    Returns:
        GramAccumulator with ``gram`` ``[d, d]`` float64 and ``count`` = number of token vectors.
    """
    from mace_core import models  # lazy import (see concept_statistics_from_pipeline)

    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r}: expected a positive int")
    # 1. start from a copy of the given state (or zeros once the width is known)
    acc: GramAccumulator | None = None
    if accumulator is not None:
        acc = GramAccumulator(accumulator.d)
        acc.load_state_dict(accumulator.state_dict())
    # 2. stream batches through the text encoder
    batch: list[str] = []

    def flush() -> None:
        nonlocal acc
        emb = models.encode_prompts(pipe, batch, batch_size)
        if acc is None:
            acc = GramAccumulator(int(emb.shape[-1]))
        acc.update(emb)
        batch.clear()

    for caption in captions:
        if not isinstance(caption, str):
            raise TypeError(f"captions must be strings, got {type(caption).__name__}")
        batch.append(caption)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    if acc is None:
        raise ValueError("captions is empty and no accumulator was given: pass at least one caption")
    logger.debug("prior gram: %d token vectors", acc.count)
    return acc
