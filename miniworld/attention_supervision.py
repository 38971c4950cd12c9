"""Cross-attention supervision with the renderer's subject masks (an optional UNet training loss).

Stable Diffusion's cross-attention localises: a word's attention map lies on the thing it names, which is
what MACE's masked attention loss and attention masks rely on. The miniworld UNet, trained on denoising
alone, does not learn that (its centred subjects let it condition globally). This loss asks, for every
subject named in a training caption, that the attention its words receive be spread over the subject's
pixels:

    L = mean over (layer, head, subject) of  1 - sum_p a(p) m(p),   a(p) = A[p, S] / sum_p' A[p', S]

with ``A[p, S]`` the attention of pixel ``p`` to the subject's tokens ``S`` and ``m`` the subject's mask
area-resized to the layer (values in [0, 1]). It is 0 when all of the words' attention mass lies inside the
subject and 1 when none does.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F

from mace_core.prompts import concept_token_mask
from miniworld.corpus import spec_of
from miniworld.render import Subject, render
from miniworld.world import OBJECTS

LATENT_SIZE = 8


def subject_phrases(subject: Subject) -> tuple[str, ...]:
    """The words a caption may use for ``subject``, longest first, ties in a fixed order (an identity's name;
    an object's class word or one of its synonyms)."""
    if subject.kind == "identity":
        return (subject.name,)
    return tuple(sorted(dict.fromkeys((subject.name, *OBJECTS[subject.name])), key=len, reverse=True))


def subject_token_masks(tokenizer, caption: str, subjects: tuple[Subject, ...]) -> torch.Tensor:
    """bool[2, L]: the caption tokens naming each subject (row 1 empty for one subject). A subject whose
    words cannot be told apart from the other's (two subjects of one class) gets no tokens."""
    out = torch.zeros(2, tokenizer.model_max_length, dtype=torch.bool)
    if len(subjects) == 2 and subjects[0].name == subjects[1].name:
        return out
    for k, subject in enumerate(subjects):
        for phrase in subject_phrases(subject):
            if phrase in caption:
                try:
                    out[k] = concept_token_mask(tokenizer, caption, phrase, include_eos_and_padding=False)
                    break
                except ValueError:  # the phrase only occurs inside another word
                    continue
    return out


def corpus_attention_targets(rows: list[dict], tokenizer) -> dict[str, torch.Tensor]:
    """Per corpus row: ``tokens`` bool[N, 2, L] (each subject's words) and ``masks`` float16[N, 2, 8, 8]
    (each subject's mask, area-resized to the latent grid; zeros for an absent second subject)."""
    tokens, masks = [], []
    for row in rows:
        spec = spec_of(row)
        tokens.append(subject_token_masks(tokenizer, row["caption"], spec.subjects))
        drawn = render(spec).masks
        full = np.zeros((2, *drawn.shape[1:]), dtype=np.float32)
        full[: len(drawn)] = drawn
        masks.append(F.adaptive_avg_pool2d(torch.from_numpy(full), LATENT_SIZE).half())
    return {"tokens": torch.stack(tokens), "masks": torch.stack(masks)}


def subject_attention_loss(
    probs_by_layer: Mapping[str, torch.Tensor], tokens: torch.Tensor, masks: torch.Tensor
) -> torch.Tensor:
    """The loss above, averaged over the (row, subject) pairs that have tokens.

    Args:
        probs_by_layer: name -> cross-attention probabilities float[B, heads, HW, L] (``AttentionCapture``).
        tokens: bool[B, K, L], the words of each of K subjects (rows without words are ignored).
        masks: float[B, K, H, W] in [0, 1], each subject's mask on a square grid.
    """
    present = tokens.any(-1)  # (B, K)
    if not present.any():
        return torch.zeros(())
    losses = []
    for probs in probs_by_layer.values():
        side = int(round(probs.shape[2] ** 0.5))
        m = F.adaptive_avg_pool2d(masks.float(), side).flatten(2)  # (B, K, HW)
        on_words = torch.einsum("bhpl,bkl->bhkp", probs.float(), tokens.float())  # (B, heads, K, HW)
        spread = on_words / on_words.sum(-1, keepdim=True).clamp_min(1e-12)
        inside = (spread * m[:, None]).sum(-1)  # (B, heads, K)
        losses.append((1 - inside).mean(1)[present])
    return torch.cat(losses).mean()
