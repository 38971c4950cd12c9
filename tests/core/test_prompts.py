"""Stage D prompts and Stage E token matching with the real CLIP BPE tokenizer (SD1 pad EOS, SD2 pad "!")."""

from __future__ import annotations

import pytest
import torch

from mace_core.concepts import Concept
from mace_core.prompts import (
    IDENTITY_TEMPLATES,
    OBJECT_TEMPLATES,
    STYLE_TEMPLATES,
    TEMPLATES,
    PromptPair,
    check_prompt_fits,
    concept_token_mask,
    match_token_indices,
    template_prompt_pairs,
)
from tests.helpers.tokenizers import clip_tokenizer

pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def tok_sd1():
    return clip_tokenizer("<|endoftext|>")


@pytest.fixture(scope="module")
def tok_sd2():
    return clip_tokenizer("!")


def test_templates_have_31_unique_with_one_placeholder():
    assert len(OBJECT_TEMPLATES) == len(STYLE_TEMPLATES) == 31
    for kind, templates in TEMPLATES.items():
        assert len(templates) == 31 and len(set(templates)) == 31, kind
        for t in templates:
            assert t.count("{}") == 1 and t == t.strip(), (kind, t)


def test_tokenizer_helper_is_real_clip_bpe(tok_sd1, tok_sd2):
    assert len(tok_sd1) == 49408
    assert tok_sd1("A photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok_sd1.pad_token_id == 49407 and tok_sd2.pad_token_id == 0


def test_template_pairs_are_deterministic_and_aligned():
    c = Concept(name="melania trump", type="identity", mapping="a woman")
    pairs = template_prompt_pairs(c, 30)
    assert pairs == template_prompt_pairs(c, 30) and len(pairs) == 30
    for p, t in zip(pairs, IDENTITY_TEMPLATES):
        assert p == PromptPair(t.format("melania trump"), t.format("a woman"), "melania trump")
    style = Concept(name="van gogh", type="style", mapping="art")
    sp = template_prompt_pairs(style, 31)
    assert [p.mapping for p in sp] == [t.format("art") for t in STYLE_TEMPLATES]
    assert [p.erased for p in sp] == [t.format("van gogh") for t in STYLE_TEMPLATES]


def test_template_pairs_use_synonyms_after_templates_and_bound_n():
    c = Concept(name="cat", type="object", mapping="forest", synonyms=("kitten",))
    pairs = template_prompt_pairs(c, 40)
    assert pairs[30].target == "cat" and pairs[31].target == "kitten"
    assert pairs[31].erased == OBJECT_TEMPLATES[0].format("kitten")
    with pytest.raises(ValueError, match="n=63 prompt pairs"):
        template_prompt_pairs(c, 63)
    with pytest.raises(ValueError, match="n=0"):
        template_prompt_pairs(c, 0)


def test_spec_example_melania(tok_sd1):
    i, j = match_token_indices(tok_sd1, "A photo of melania trump", "A photo of a woman")
    expected = [0, 1, 2, 3] + list(range(6, 77))  # BOS a photo of | EOS(6) pads 7..76
    assert i == expected and j == expected
    assert len(i) == 77 - 2 - 0


def test_spec_example_longer_mapping_single_token_concept(tok_sd1):
    """Spec Stage E: 6-token erased prompt vs 9-token mapping: EOS 5 -> 8, pads 6..73 -> 9..76."""
    i, j = match_token_indices(tok_sd1, "A photo of naked", "A photo of a person wearing clothes")
    assert i[:4] == j[:4] == [0, 1, 2, 3]
    assert (i[4], j[4]) == (5, 8)
    assert i[5:] == list(range(6, 74)) and j[5:] == list(range(9, 77))
    assert len(i) == len(j) == 77 - 1 - 3


def test_nudity_is_two_bpe_tokens(tok_sd1):
    """With the real BPE "nudity" is 'nu' + 'dity' (the spec example counts it as one): EOS 6 -> 8."""
    i, j = match_token_indices(tok_sd1, "A photo of nudity", "A photo of a person wearing clothes")
    assert (i[4], j[4]) == (6, 8)
    assert i[5:] == list(range(7, 75)) and j[5:] == list(range(9, 77))
    assert len(i) == 77 - 2 - 2


@pytest.mark.parametrize(
    "erased,mapping,prefix,eos_old,eos_new",
    [
        ("melania trump in an official photo", "a woman in an official photo", [0], 7, 7),  # start
        ("a portrait of melania trump smiling", "a portrait of a person smiling", [0, 1, 2, 3], 7, 7),  # middle
        ("a painting in the style of vincent van gogh", "a painting in the style of art", list(range(7)), 10, 8),
    ],
)
def test_target_at_start_middle_end_and_multi_token(tok_sd1, erased, mapping, prefix, eos_old, eos_new):
    i, j = match_token_indices(tok_sd1, erased, mapping)
    old = tok_sd1(erased).input_ids
    new = tok_sd1(mapping).input_ids
    p = len(prefix)
    assert i[:p] == j[:p] == prefix
    # every matched non-padding pair carries the same token id (prefix/suffix are common)
    for a, b in zip(i, j):
        if a < len(old) and b < len(new):
            assert old[a] == new[b]
    assert eos_old in i and eos_new in j and i.index(eos_old) == j.index(eos_new)
    n_target = len([k for k in range(len(old)) if k not in i])  # excluded span of the erased prompt
    assert n_target >= 1
    assert len(i) == len(j) == 77 - n_target - max(0, len(new) - len(old))
    assert max(i[-1], j[-1]) == 76 and i == sorted(i) and j == sorted(j)


def test_matching_independent_of_pad_token_sd2_and_sdxl(tok_sd1, tok_sd2):
    """SD2 pads with "!"; SDXL has both tokenizers: matching must agree for every template pair."""
    for c in (Concept(name="melania trump", type="identity", mapping="a person"),
              Concept(name="van gogh", type="style", mapping="art"),
              Concept(name="nudity", type="explicit", mapping="a person wearing clothes"),
              Concept(name="airplane", type="object", mapping="ground")):
        for p in template_prompt_pairs(c, 31):
            a = match_token_indices(tok_sd1, p.erased, p.mapping, p.target)
            b = match_token_indices(tok_sd2, p.erased, p.mapping, p.target)
            assert a == b, p


def test_matching_errors(tok_sd1):
    with pytest.raises(ValueError, match="tokenize identically"):
        match_token_indices(tok_sd1, "a photo of a cat", "A photo of a  cat")
    with pytest.raises(ValueError, match="not in the span"):
        match_token_indices(tok_sd1, "a photo of a cat", "a photo of a dog", target="bird")
    with pytest.raises(ValueError, match="no tokens that differ"):
        match_token_indices(tok_sd1, "a photo of cat", "a photo of cat wearing clothes")
    long = "a photo of " + "very " * 80 + "cat"
    with pytest.raises(ValueError, match="context window is 77"):
        match_token_indices(tok_sd1, long, "a photo of a dog")


def test_check_prompt_fits(tok_sd1):
    check_prompt_fits(tok_sd1, "a photo of a cat")
    check_prompt_fits(tok_sd1, " ".join(["cat"] * 75))  # 75 + BOS + EOS = 77 fits
    with pytest.raises(ValueError, match="76 tokens|77 tokens|78 tokens"):
        check_prompt_fits(tok_sd1, " ".join(["cat"] * 76))


def _official_mask(tok, prompt, target):
    """Official concept_positions: target subsequence + every id equal to <|endoftext|> (use_pooler)."""
    ids = tok(prompt, padding="max_length", max_length=77).input_ids
    t = tok(target).input_ids[1:-1]
    mask = torch.zeros(77, dtype=torch.bool)
    for s in range(77 - len(t) + 1):
        if ids[s : s + len(t)] == t:
            mask[s : s + len(t)] = True
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    mask |= torch.tensor(ids) == eos
    return mask


def test_concept_token_mask_sd1_equals_official_and_sd2_still_marks_padding(tok_sd1, tok_sd2):
    prompt, target = "a photo of melania trump at an event", "melania trump"
    m1 = concept_token_mask(tok_sd1, prompt, target)
    assert torch.equal(m1, _official_mask(tok_sd1, prompt, target))
    m2 = concept_token_mask(tok_sd2, prompt, target)
    assert torch.equal(m1, m2)
    assert m2.dtype == torch.bool and m2.shape == (77,)
    assert m2[4] and m2[5] and not m2[3] and m2[9:].all() and int(m2.sum()) == 2 + (77 - 9)
    # the official pad==EOS test on an SD2 tokenizer marks only EOS (spec 6.10)
    assert int(_official_mask(tok_sd2, prompt, target)[10:].sum()) == 0
    only = concept_token_mask(tok_sd2, prompt, target, include_eos_and_padding=False)
    assert only.nonzero().flatten().tolist() == [4, 5]


def test_concept_token_mask_every_occurrence_and_errors(tok_sd1):
    m = concept_token_mask(tok_sd1, "a cat and a cat sitting", "cat", include_eos_and_padding=False)
    assert m.nonzero().flatten().tolist() == [2, 5]
    with pytest.raises(ValueError, match="not found in prompt"):
        concept_token_mask(tok_sd1, "a photo of a dog", "cat")
