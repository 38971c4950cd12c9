"""A CLIP BPE tokenizer trimmed to the miniworld's words, built offline from open_clip's vocab.

BPE applies the lowest-ranked applicable merge first. Keeping exactly the merges that fire while
tokenising the world's words (in their original order) therefore reproduces the full tokenizer's
pieces for those words; the 512 byte symbols stay, so any other text still tokenises (into
smaller pieces). Token ids are renumbered; the pieces are identical.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import regex
from transformers import CLIPTokenizer

MAX_LENGTH = 77
_PAT = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def bpe_vocab_path() -> Path:
    """open_clip's bundled BPE merges file (``bpe_simple_vocab_16e6.txt.gz``)."""
    import open_clip  # only needed when (re)building the tokenizer

    return Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"


@cache
def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _full_merges(path: Path) -> list[tuple[str, str]]:
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    return [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]  # type: ignore[misc]


def _words(texts: Iterable[str]) -> set[str]:
    """Byte-encoded pre-tokens of ``texts``, lower-cased as CLIP does."""
    b2u = _bytes_to_unicode()
    out: set[str] = set()
    for text in texts:
        for tok in _PAT.findall(" ".join(text.lower().split())):
            out.add("".join(b2u[b] for b in tok.encode("utf-8")))
    return out


def _merges_used(word: str, ranks: dict[tuple[str, str], int]) -> set[int]:
    """Ranks of the merges the full BPE applies to ``word``."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    used: set[int] = set()
    while len(parts) > 1:
        pairs = {(a, b) for a, b in zip(parts, parts[1:])}
        best = min(pairs, key=lambda p: ranks.get(p, 1 << 30))
        if best not in ranks:
            break
        used.add(ranks[best])
        merged, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return used


def build_tokenizer(texts: Iterable[str], out_dir: Path, bpe_path: Path | None = None) -> CLIPTokenizer:
    """Write a trimmed ``vocab.json`` + ``merges.txt`` covering ``texts``; return the tokenizer."""
    merges = _full_merges(bpe_path or bpe_vocab_path())
    ranks = {m: i for i, m in enumerate(merges)}
    used: set[int] = set()
    for word in _words(texts):
        used |= _merges_used(word, ranks)
    kept = [merges[i] for i in sorted(used)]
    base = list(_bytes_to_unicode().values())
    tokens = base + [t + "</w>" for t in base] + ["".join(m) for m in kept]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (out_dir / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in kept), encoding="utf-8")
    return load_tokenizer(out_dir)


def load_tokenizer(directory: Path) -> CLIPTokenizer:
    """Load a tokenizer written by `build_tokenizer` (or saved with ``save_pretrained``)."""
    if (directory / "tokenizer_config.json").exists():
        return CLIPTokenizer.from_pretrained(str(directory))
    vocab = json.loads((directory / "vocab.json").read_text())
    lines = (directory / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    merges = [tuple(line.split()) for line in lines if line]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MAX_LENGTH)
