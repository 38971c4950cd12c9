"""Typed concept specification: what to erase, its type, and what to map it to (spec Stage D)."""

from __future__ import annotations

import unicodedata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ConceptType = Literal["object", "identity", "style", "explicit"]
CONCEPT_TYPES: tuple[str, ...] = ("object", "identity", "style", "explicit")
MAX_CONCEPT_CHARS = 200


def _check_phrase(value: str, field: str) -> str:
    """Normalise a phrase (NFC, collapsed spaces) and reject what cannot be a prompt phrase."""
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a string, got {type(value).__name__}")
    text = " ".join(unicodedata.normalize("NFC", value).split())
    if not text:
        raise ValueError(f"{field} is empty: give a non-empty phrase such as 'cat'")
    if len(text) > MAX_CONCEPT_CHARS:
        raise ValueError(
            f"{field} has {len(text)} characters (max {MAX_CONCEPT_CHARS}): shorten it"
        )
    bad = [c for c in text if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn")]
    if bad:
        raise ValueError(
            f"{field} {text[:40]!r} contains control/format characters {sorted({hex(ord(c)) for c in bad})}: "
            "remove them"
        )
    return text


class Concept(BaseModel):
    """One concept to erase.

    ``name`` is the phrase as it appears in prompts ("cat", "van gogh"); ``mapping`` is the phrase that
    replaces it in the mapping prompts ("forest", "a person", "art"); ``synonyms`` are extra phrases
    that should be erased with it (used for prompt augmentation and the generality metric).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Concept phrase as written in prompts, e.g. 'cat'.")
    type: ConceptType = Field(description="object | identity | style | explicit.")
    mapping: str = Field(description="Phrase that replaces the concept in mapping prompts.")
    synonyms: tuple[str, ...] = Field(default=(), description="Other phrases for the same concept.")

    @field_validator("type", mode="before")
    @classmethod
    def _known_type(cls, value: object) -> object:
        if value not in CONCEPT_TYPES:
            raise ValueError(f"unknown concept type {value!r}: use one of {', '.join(CONCEPT_TYPES)}")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_phrase(value, "concept name")

    @field_validator("mapping")
    @classmethod
    def _mapping(cls, value: str) -> str:
        return _check_phrase(value, "concept mapping")

    @field_validator("synonyms")
    @classmethod
    def _synonyms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_check_phrase(s, "concept synonym") for s in value)

    @model_validator(mode="after")
    def _mapping_differs(self) -> Concept:
        if self.name.casefold() == self.mapping.casefold():
            raise ValueError(
                f"concept {self.name!r} maps to itself: choose a different mapping phrase"
            )
        return self

    @property
    def key(self) -> str:
        """Case-folded name used for de-duplication and seeds."""
        return self.name.casefold()
