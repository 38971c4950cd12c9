"""Prompt construction and token matching (spec section 1, Stage D and Stage E; bugs 6.10, 6.12).

Stage D builds, for every concept, template-aligned pairs (erased prompt, mapping prompt): the same template
is filled once with the concept phrase and once with the mapping phrase, so the two prompts differ only in
that span. Stage E decides which token positions of the erased prompt are re-mapped onto which positions
of the mapping prompt: the longest common prefix and the (non-overlapping) longest common suffix of the two
unpadded id lists, then the padding tail aligned by offset from EOS. The differing middle (the concept
phrase) is excluded.

Everything here works with any CLIP tokenizer (``transformers.CLIPTokenizer`` or a fast one): the matching
uses the unpadded ids only, and padding is handled by position, never by comparing ids with the pad id, so
SD 1.x (pad == EOS) and SD 2.x / SDXL's second tokenizer (pad ``"!"``) give identical results.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from mace_core.concepts import Concept

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# Templates (spec Stage D: 31 per type; ``{}`` is the concept phrase). Written for this project.
# The official code reuses the object list for identities and explicit terms ("a photo of the adam driver");
# identities and explicit concepts get their own phrasing here, which reads naturally with both the concept
# and typical mappings ("a person", "a woman", "a person wearing clothes").
# ---------------------------------------------------------------------------------------------------------

OBJECT_TEMPLATES: tuple[str, ...] = (
    "a photo of the {}",
    "a picture of a {}",
    "a close-up photo of the {}",
    "a blurry photo of a {}",
    "a bright photo of the {}",
    "a dark photo of the {}",
    "a cropped photo of a {}",
    "a black and white photo of the {}",
    "a good photo of a {}",
    "a low resolution photo of the {}",
    "a photo of a small {}",
    "a photo of a large {}",
    "a photo of the {} outdoors",
    "a photo of the {} in a room",
    "a snapshot of a {} taken on a phone",
    "a drawing of the {}",
    "a painting of a {}",
    "a sketch of the {}",
    "a 3d render of a {}",
    "a cartoon {}",
    "an illustration of the {}",
    "a realistic image of a {}",
    "a detailed photograph of the {}",
    "a {} in the center of the frame",
    "a {} on a sunny day",
    "a {} at night",
    "there is a {} in this image",
    "an old photo of a {}",
    "a professional photo of the {}",
    "a {} seen from the side",
    "a wide shot of the {}",
)

STYLE_TEMPLATES: tuple[str, ...] = (
    "a painting in the style of {}",
    "an artwork in the style of {}",
    "a landscape in the style of {}",
    "a portrait in the style of {}",
    "a still life in the style of {}",
    "a city street painted in the style of {}",
    "a seascape in the style of {}",
    "a drawing in the style of {}",
    "a sketch in the style of {}",
    "an illustration in the style of {}",
    "a picture of a house in the style of {}",
    "a forest scene in the style of {}",
    "a painting of flowers in the style of {}",
    "an image of a mountain in the style of {}",
    "a night sky in the style of {}",
    "a famous artwork by {}",
    "a painting by {}",
    "a reproduction of a work by {}",
    "art inspired by {}",
    "an image in the manner of {}",
    "a canvas painted by {}",
    "a mural in the style of {}",
    "a poster in the style of {}",
    "a watercolor in the style of {}",
    "an abstract composition in the style of {}",
    "a self-portrait in the style of {}",
    "a village scene in the style of {}",
    "a river at dusk in the style of {}",
    "a crowd of people in the style of {}",
    "a cafe interior in the style of {}",
    "a garden in the style of {}",
)

IDENTITY_TEMPLATES: tuple[str, ...] = (
    "a portrait of {}",
    "a photo of {}",
    "a close-up photo of {}",
    "a headshot of {}",
    "an image of {} at a public event",
    "{} in an official photo",
    "an oil painting of {}",
    "a sketch of {}",
    "a candid photo of {}",
    "a black and white portrait of {}",
    "{} smiling at the camera",
    "{} on the red carpet",
    "{} giving a speech",
    "{} in a magazine cover shoot",
    "a press photo of {}",
    "a studio portrait of {}",
    "{} walking down the street",
    "{} sitting in a chair",
    "a photo of {} at an interview",
    "{} wearing a suit",
    "a drawing of {}",
    "a painting of {}",
    "a selfie of {}",
    "{} at a press conference",
    "a photograph of {} outdoors",
    "a photo of {} looking to the side",
    "a realistic portrait of {}",
    "{} in a television interview",
    "a vintage photo of {}",
    "a profile picture of {}",
    "a high quality photo of {}",
)

EXPLICIT_TEMPLATES: tuple[str, ...] = (
    "a photo of {}",
    "an image of {}",
    "a picture showing {}",
    "a painting of {}",
    "a drawing of {}",
    "a photograph with {}",
    "an artwork depicting {}",
    "a realistic image of {}",
    "a close-up photo of {}",
    "a film still of {}",
    "a sketch of {}",
    "a scene with {}",
    "a photo of {} on a beach",
    "a photo of {} in a bedroom",
    "a photo of {} in a studio",
    "an illustration of {}",
    "a digital render of {}",
    "an oil painting of {}",
    "a watercolor of {}",
    "a magazine photo of {}",
    "a professional photo of {}",
    "a low quality photo of {}",
    "a high resolution photo of {}",
    "a black and white photo of {}",
    "a vintage photo of {}",
    "a cinematic shot of {}",
    "a candid photo of {}",
    "a blurry photo of {}",
    "a detailed image of {}",
    "a photo of {} outdoors",
    "a stylised image of {}",
)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "object": OBJECT_TEMPLATES,
    "style": STYLE_TEMPLATES,
    "identity": IDENTITY_TEMPLATES,
    "explicit": EXPLICIT_TEMPLATES,
}


@dataclass(frozen=True)
class PromptPair:
    """One template-aligned pair (spec Stage D).

    Attributes:
        erased: the prompt containing the concept phrase, e.g. "a photo of melania trump".
        mapping: the same template filled with the mapping phrase, e.g. "a photo of a woman".
        target: the concept phrase as it occurs in ``erased`` (the name or a synonym).
    """

    erased: str
    mapping: str
    target: str


def template_prompt_pairs(concept: Concept, n: int) -> list[PromptPair]:
    """Return ``n`` deterministic (erased, mapping, target) pairs for ``concept`` (spec Stage D).

    Official behaviour: 30 of 31 templates, template-aligned erased/mapping prompts (the random permutation in
    the official code always selects templates 0..29, so "the first n" is the same set). Pair k uses template
    ``k % T`` and phrase ``(name, *synonyms)[k // T]``, so synonyms are only used once the templates of the
    main name are exhausted; the mapping prompt substitutes ``concept.mapping`` into the same template.

    Args:
        concept: the concept (its ``type`` picks the template list).
        n: number of pairs, 1 <= n <= T * (1 + len(synonyms)).
    """
    # 1. validate
    if not isinstance(concept, Concept):
        raise TypeError(f"concept must be a mace_core.concepts.Concept, got {type(concept).__name__}")
    templates = TEMPLATES[concept.type]
    phrases = (concept.name, *concept.synonyms)
    capacity = len(templates) * len(phrases)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or n > capacity:
        raise ValueError(
            f"n={n!r} prompt pairs requested for concept {concept.name!r}: expected an int in 1..{capacity} "
            f"({len(templates)} {concept.type} templates x {len(phrases)} phrases); lower n or add synonyms"
        )
    # 2. fill the same template with the concept phrase and the mapping phrase
    pairs = []
    for k in range(n):
        template = templates[k % len(templates)]
        phrase = phrases[k // len(templates)]
        pairs.append(PromptPair(template.format(phrase), template.format(concept.mapping), phrase))
    return pairs


# ---------------------------------------------------------------------------------------------------------
# Tokenisation helpers
# ---------------------------------------------------------------------------------------------------------


def _max_length(tokenizer: Any) -> int:
    """Context window L of a CLIP tokenizer (77), checked so a tokenizer without a limit fails clearly."""
    max_len = getattr(tokenizer, "model_max_length", None)
    if not isinstance(max_len, int) or max_len < 2 or max_len > 100_000:
        raise ValueError(
            f"tokenizer.model_max_length={max_len!r}: expected the context window (77 for CLIP); "
            "build the tokenizer with model_max_length=77"
        )
    return max_len


def _ids(tokenizer: Any, text: str) -> list[int]:
    """Unpadded, untruncated ids ``[BOS, ..., EOS]`` of ``text``."""
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a string, got {type(text).__name__}")
    return list(tokenizer(text, padding=False, truncation=False, add_special_tokens=True)["input_ids"])


def _phrase_ids(tokenizer: Any, phrase: str) -> list[int]:
    """Ids of ``phrase`` without BOS/EOS (CLIP BPE works word by word, so they recur inside prompts)."""
    ids = _ids(tokenizer, phrase)
    inner = ids[1:-1]
    if not inner:
        raise ValueError(f"phrase {phrase!r} tokenizes to no tokens: use a non-empty phrase")
    return inner


def check_prompt_fits(tokenizer: Any, prompt: str) -> None:
    """Raise a one-line ValueError if ``prompt`` (with BOS and EOS) exceeds the tokenizer's context window.

    A prompt that would be truncated loses its EOS, which breaks the Stage E alignment and the attention-loss
    token mask (both anchor on EOS); the official code would silently truncate.
    """
    max_len = _max_length(tokenizer)
    n = len(_ids(tokenizer, prompt))
    if n > max_len:
        raise ValueError(
            f"prompt {prompt[:60]!r} has {n} tokens incl. BOS/EOS but the context window is {max_len}: "
            "shorten the prompt, concept or template"
        )


def _find_all(seq: list[int], sub: list[int]) -> list[int]:
    """Start positions of every occurrence of ``sub`` in ``seq`` (overlapping occurrences included)."""
    m = len(sub)
    return [s for s in range(len(seq) - m + 1) if seq[s : s + m] == sub]


# ---------------------------------------------------------------------------------------------------------
# Stage E token matching
# ---------------------------------------------------------------------------------------------------------


def match_token_indices(
    tokenizer: Any, erased: str, mapping: str, target: str | None = None
) -> tuple[list[int], list[int]]:
    """Matched positions (i in erased, j in mapping) of spec Stage E (``find_matching_indices``).

    Algorithm on the unpadded id lists ``o`` (erased) and ``n`` (mapping), both ``[BOS, ..., EOS]``:
      1. prefix ``p`` = longest common prefix length;
      2. suffix ``s`` = longest common suffix length with ``p + s <= min(len(o), len(n))`` (no overlap);
         the suffix always contains EOS;
      3. matched = prefix positions (identical in both) + suffix positions (offset by the length difference);
      4. padding: positions after each EOS are paired by offset from EOS; the longer prompt's tail is
         dropped, so both lists end at ``L - 1`` on the longer side.
    Both lists have length ``L - n_target - max(0, len(n) - len(o))`` with ``n_target = len(o) - p - s``.
    The pad id is never consulted, so pad == EOS (SD 1.x) and pad == "!" (SD 2.x) give the same result.

    Args:
        tokenizer: a CLIP tokenizer (``model_max_length`` = L, 77).
        erased: prompt containing the concept, e.g. "A photo of melania trump".
        mapping: the same template with the mapping phrase, e.g. "A photo of a woman".
        target: optional concept phrase; if given it must lie inside the excluded span of ``erased``.

    Returns:
        (erased_positions, mapping_positions): equal-length lists of ints in ``[0, L)``, ascending.
    """
    # 1. tokenise without padding and check both fit (EOS must survive)
    max_len = _max_length(tokenizer)
    check_prompt_fits(tokenizer, erased)
    check_prompt_fits(tokenizer, mapping)
    old, new = _ids(tokenizer, erased), _ids(tokenizer, mapping)
    if old == new:
        raise ValueError(
            f"erased prompt {erased!r} and mapping prompt {mapping!r} tokenize identically: "
            "the mapping phrase must differ from the concept"
        )
    # 2. longest common prefix
    shortest = min(len(old), len(new))
    p = 0
    while p < shortest and old[p] == new[p]:
        p += 1
    # 3. longest common suffix that does not overlap the prefix
    s = 0
    while p + s < shortest and old[-1 - s] == new[-1 - s]:
        s += 1
    if s == 0:
        raise ValueError(
            f"prompts {erased!r} / {mapping!r} do not end with a common EOS token: "
            "use a CLIP tokenizer that appends EOS"
        )
    n_target = len(old) - p - s
    if n_target == 0:
        raise ValueError(
            f"erased prompt {erased!r} has no tokens that differ from mapping prompt {mapping!r}: "
            "the erased prompt must contain the concept where the mapping prompt has the mapping phrase"
        )
    # 4. optional check that the concept phrase is the excluded span (or inside it)
    if target is not None:
        t_ids = _phrase_ids(tokenizer, target)
        inside = [st for st in _find_all(old, t_ids) if st >= p and st + len(t_ids) <= len(old) - s]
        if not inside:
            raise ValueError(
                f"concept {target!r} is not in the span where {erased!r} differs from {mapping!r}: "
                "fill the same template with the concept and the mapping phrase"
            )
    # 5. prefix + suffix positions
    old_idx = list(range(p)) + list(range(len(old) - s, len(old)))
    new_idx = list(range(p)) + list(range(len(new) - s, len(new)))
    # 6. padding aligned by offset from EOS; the longer tail is cut where the shorter window ends
    old_last, new_last = len(old) - 1, len(new) - 1
    n_pad = max_len - 1 - max(old_last, new_last)
    old_idx += list(range(old_last + 1, old_last + 1 + n_pad))
    new_idx += list(range(new_last + 1, new_last + 1 + n_pad))
    expected = max_len - n_target - max(0, len(new) - len(old))
    if len(old_idx) != expected or len(new_idx) != expected:  # internal invariant, not user input
        raise RuntimeError(f"token matching produced {len(old_idx)}/{len(new_idx)} pairs, expected {expected}")
    return old_idx, new_idx


def concept_token_mask(
    tokenizer: Any, prompt: str, target: str, include_eos_and_padding: bool = True
) -> torch.Tensor:
    """Positions whose attention the LoRA loss suppresses (spec Stage D ``concept_positions``, paper Eq. 3).

    Marks every occurrence of ``target``'s token subsequence in ``prompt`` and, when
    ``include_eos_and_padding`` (official ``use_pooler: true``), the EOS position and every position after it.
    Padding is marked by position, not by ``id == pad_id``: the official pad == EOS test marks only EOS on
    SD 2.x, whose pad token is "!" (spec 6.10).

    Args:
        tokenizer: a CLIP tokenizer with ``model_max_length`` L.
        prompt: the conditioning prompt, e.g. "a photo of the cat".
        target: the concept phrase in it, e.g. "cat".
        include_eos_and_padding: also mark EOS and the padding tail.

    Returns:
        torch.BoolTensor of shape ``[L]``.
    """
    # 1. tokenise; the prompt must fit and contain the target
    max_len = _max_length(tokenizer)
    check_prompt_fits(tokenizer, prompt)
    ids = _ids(tokenizer, prompt)
    t_ids = _phrase_ids(tokenizer, target)
    starts = _find_all(ids[1:-1], t_ids)  # search the words only, never BOS/EOS
    if not starts:
        raise ValueError(
            f"concept {target!r} not found in prompt {prompt!r}: the prompt must contain the concept phrase"
        )
    # 2. mark concept occurrences (+1 for BOS)
    mask = torch.zeros(max_len, dtype=torch.bool)
    for st in starts:
        mask[1 + st : 1 + st + len(t_ids)] = True
    # 3. EOS and the padding tail, by position
    if include_eos_and_padding:
        mask[len(ids) - 1 :] = True
    return mask
