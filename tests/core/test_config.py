"""Config and concept validation (STYLE.md 6): unknown keys, ranges, duplicates, self-mapping, types."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mace_core.concepts import Concept
from mace_core.config import CFRConfig, FusionConfig, LoraConfig, MaceConfig

CAT = {"name": "cat", "type": "object", "mapping": "forest"}
OK = {"cfr": {"lam": 1.0}, "fusion": {"lam": 1.0}}


def test_valid_config_and_frozen():
    cfg = MaceConfig(concepts=[CAT], **OK)
    assert cfg.concepts[0].name == "cat" and cfg.cfr.square_prior_weight is False
    with pytest.raises(ValidationError):
        cfg.seed = 3


def test_unknown_key_raises_naming_field():
    with pytest.raises(ValidationError, match="lamda"):
        CFRConfig(lamda=1.0)
    with pytest.raises(ValidationError, match="unknown_section"):
        MaceConfig(concepts=[CAT], unknown_section={}, **OK)


def test_out_of_range_raises_naming_field():
    with pytest.raises(ValidationError, match="lam"):
        CFRConfig(lam=-1.0)
    with pytest.raises(ValidationError, match="rank"):
        LoraConfig(rank=0)
    with pytest.raises(ValidationError, match="prior_weight"):
        FusionConfig(prior_weight=-0.5)
    with pytest.raises(ValidationError, match="cfis_t2"):
        LoraConfig(cfis_t1=400, cfis_t2=200)


def test_duplicate_and_empty_concepts():
    with pytest.raises(ValidationError, match="duplicate concept"):
        MaceConfig(concepts=[CAT, {**CAT, "name": "Cat"}], **OK)
    with pytest.raises(ValidationError, match="concepts is empty"):
        MaceConfig(concepts=[], **OK)
    with pytest.raises(ValidationError, match="concept name is empty"):
        Concept(name="  ", type="object", mapping="forest")


def test_retain_list_must_not_hold_an_erased_concept_or_synonym():
    kitty = {**CAT, "synonyms": ["kitty"]}
    for retained in ("Cat", " KITTY "):
        with pytest.raises(ValidationError, match=r"prior.retain lists .* also erased"):
            MaceConfig(concepts=[kitty], prior={"retain": ["dog", retained]}, **OK)
    assert MaceConfig(concepts=[kitty], prior={"retain": ["dog", "a cat on a mat"]}, **OK).prior.retain[0] == "dog"


def test_concept_equal_to_mapping_and_unknown_type():
    with pytest.raises(ValidationError, match="maps to itself"):
        Concept(name="Cat", type="object", mapping="cat")
    with pytest.raises(ValidationError, match="unknown concept type 'animal'"):
        Concept(name="cat", type="animal", mapping="forest")


def test_singular_cfr_config_rejected_before_work():
    with pytest.raises(ValidationError, match="cfr.lam > 0 or cfr.prior_weight > 0"):
        MaceConfig(concepts=[CAT])


@pytest.mark.parametrize("bad", ["bad name", "../up", "-dash-first", "a/b", "x\n"])
def test_run_name_must_be_a_safe_manifest_name(bad):
    """A run name becomes the run manifest's file name: rejected at config time, not after training."""
    with pytest.raises(ValidationError, match="name"):
        MaceConfig(name=bad, concepts=[CAT], **OK)
    assert MaceConfig(name="run-1.v2_ok", concepts=[CAT], **OK).name == "run-1.v2_ok"
