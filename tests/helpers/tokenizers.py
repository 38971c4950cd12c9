"""Offline CLIP tokenizers built from the BPE vocabulary that ``open_clip`` bundles.

No Hub access: ``vocab.json`` / ``merges.txt`` are written from ``bpe_simple_vocab_16e6.txt.gz`` with the
same recipe as open_clip's ``SimpleTokenizer`` (install_notes.md section 4), giving the 49,408-token
CLIP vocabulary that SD 1.x / 2.x / SDXL use. Only the pad token differs between families:

- SD 1.x and SDXL's first tokenizer pad with ``"<|endoftext|>"`` (pad id == EOS id 49407);
- SD 2.x and SDXL's second tokenizer pad with ``"!"`` (pad id 0).
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import tempfile
from pathlib import Path

N_MERGES = 49152 - 256 - 2  # open_clip SimpleTokenizer: lines[1 : 48895]


def write_clip_vocab(cache_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` into ``cache_dir`` (idempotent); return their paths."""
    import open_clip
    import open_clip.tokenizer as oct

    d = Path(cache_dir)
    d.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = d / "vocab.json", d / "merges.txt"
    if vocab_path.exists() and merges_path.exists():
        return vocab_path, merges_path
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    vocab = list(oct.bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    # write to temp names then rename, so concurrent test workers never read half a file
    tmp_v = d / f"vocab.json.{os.getpid()}.tmp"
    tmp_m = d / f"merges.txt.{os.getpid()}.tmp"
    tmp_v.write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    tmp_m.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    os.replace(tmp_v, vocab_path)
    os.replace(tmp_m, merges_path)
    return vocab_path, merges_path


def _default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / "mace_test_clip_bpe"


@functools.lru_cache(maxsize=8)
def _cached(pad_token: str, cache_dir: str):
    from transformers import CLIPTokenizer

    vocab_path, merges_path = write_clip_vocab(cache_dir)
    return CLIPTokenizer(
        str(vocab_path), str(merges_path), model_max_length=77, pad_token=pad_token
    )


def clip_tokenizer(pad_token: str = "<|endoftext|>", cache_dir: str | os.PathLike[str] | None = None):
    """A real CLIP BPE ``CLIPTokenizer`` (77 positions) with the given pad token, built offline.

    Args:
        pad_token: ``"<|endoftext|>"`` (SD 1.x, SDXL tokenizer 1) or ``"!"`` (SD 2.x, SDXL tokenizer 2).
        cache_dir: where ``vocab.json``/``merges.txt`` are written; default a folder in the temp dir.

    The returned object is shared between calls with the same arguments; do not mutate it.
    """
    return _cached(pad_token, str(cache_dir if cache_dir is not None else _default_cache_dir()))
