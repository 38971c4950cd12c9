"""Per-concept seeds (DESIGN.md "Seeds"; fixes spec Stage F randomness coupling and 6.9).

The official code seeds once and lets every LoRA consume a shared RNG stream, so LoRA k depends on the number
and order of the preceding concepts. Here ``seed_k = sha256(global seed, concept name)``: a concept's images
and LoRA depend only on itself and the global seed.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata

SEED_BITS = 63


def concept_seed(global_seed: int, concept_name: str) -> int:
    """Deterministic 63-bit seed for one concept, independent of the set and its order.

    The name is NFC-normalised, whitespace-collapsed and case-folded first ("Van Gogh" == "van  gogh").

    Args:
        global_seed: the run's seed (int >= 0).
        concept_name: the concept phrase.

    Returns:
        int in ``[0, 2**63)`` (fits ``torch.Generator.manual_seed``).
    """
    if isinstance(global_seed, bool) or not isinstance(global_seed, int) or global_seed < 0:
        raise ValueError(f"global_seed={global_seed!r}: expected an int >= 0")
    if not isinstance(concept_name, str) or not concept_name.strip():
        raise ValueError(f"concept_name={concept_name!r}: expected a non-empty string")
    key = " ".join(unicodedata.normalize("NFC", concept_name).split()).casefold()
    payload = json.dumps(["mace-concept-seed-v1", global_seed, key], ensure_ascii=False).encode("utf-8")
    digest = hashlib.sha256(payload).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - SEED_BITS)
