"""Build the caption corpora (parquet) and the trimmed tokenizer: ``python -m miniworld.build_data``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from miniworld.corpus import CORPUS_SEED, CORPUS_SIZE, HELDOUT_SEED, HELDOUT_SIZE, ensure_corpus
from miniworld.paths import CAPTIONS_PATH, HELDOUT_CAPTIONS_PATH, PIPELINE_DIR
from miniworld.prompts import extra_vocabulary_texts
from miniworld.tokenizer import build_tokenizer

log = logging.getLogger("miniworld.build_data")


def main() -> None:
    """Write captions.parquet, heldout_captions.parquet and the pipeline's tokenizer."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokenizer-out", type=Path, default=PIPELINE_DIR / "tokenizer")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    corpus = ensure_corpus(CAPTIONS_PATH, CORPUS_SIZE, CORPUS_SEED)
    heldout = ensure_corpus(HELDOUT_CAPTIONS_PATH, HELDOUT_SIZE, HELDOUT_SEED)
    log.info("corpus %d rows, held-out %d rows", corpus.num_rows, heldout.num_rows)
    texts = corpus.column("caption").to_pylist() + heldout.column("caption").to_pylist() + extra_vocabulary_texts()
    tok = build_tokenizer(texts, args.tokenizer_out)
    tok.save_pretrained(str(args.tokenizer_out))
    log.info("tokenizer: %d tokens -> %s", len(tok), args.tokenizer_out)


if __name__ == "__main__":
    main()
