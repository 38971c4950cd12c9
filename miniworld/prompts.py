"""Evaluation prompts of the miniworld and extra words its tokenizer keeps whole."""

from __future__ import annotations

from miniworld.captions import article
from miniworld.world import IDENTITIES, OBJECT_CLASSES, OBJECTS, STYLES

# The CLIP / MACE prompt templates (objects and styles), so that their words stay whole tokens.
GENERIC_TEMPLATES: tuple[str, ...] = (
    "a photo of the {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}",
    "a cropped photo of a {}", "a photo of the {}", "a good photo of the {}", "a photo of one {}",
    "a close-up photo of the {}", "a rendition of the {}", "a photo of the clean {}",
    "a rendition of a {}", "a photo of a nice {}", "a good photo of a {}", "a photo of the nice {}",
    "a photo of the small {}", "a photo of the weird {}", "a photo of the large {}",
    "a photo of a cool {}", "a photo of a small {}", "an image of {}", "a painting in the style of {}",
    "art by {}", "a sketch of {}", "a portrait of {}", "a picture of {}", "a drawing by {}",
    "a famous painting by {}", "a sculpture of {}", "a close up of {}",
)


def object_prompt(noun: str) -> str:
    """The object-quality prompt for a class name or synonym."""
    return f"a photo of {article(noun)} {noun}"


def identity_prompt(name: str) -> str:
    """The identity-quality prompt."""
    return f"a portrait of {name}"


def style_prompt(style: str, object_class: str) -> str:
    """The style-quality prompt: an object painted in ``style``."""
    return f"{article(object_class)} {object_class} in the style of {style}"


def extra_vocabulary_texts() -> list[str]:
    """Texts whose words the trimmed tokenizer must tokenise exactly as full CLIP does."""
    names = list(OBJECT_CLASSES) + [s for syn in OBJECTS.values() for s in syn] + list(IDENTITIES) + list(STYLES)
    return [t.format(n) for t in GENERIC_TEMPLATES for n in names[:3]] + names
