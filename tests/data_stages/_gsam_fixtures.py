"""Tiny local components for the Grounded-SAM tests: a BERT directory and a SAM (install_notes.md sections 1-2)."""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", "a", "the", "cat", "dog", "red", "photo", "of",
         "melania", "trump"]


def write_tiny_bert(directory: Path) -> Path:
    """A 2-layer, 32-wide random BERT with a 16-word vocabulary, saved as a local ``text_encoder_type`` dir."""
    from transformers import BertConfig, BertModel, BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(directory)
    BertTokenizer(str(directory / "vocab.txt")).save_pretrained(directory)
    return directory


def tiny_sam(img_size: int = 64, seed: int = 0):
    """A ~0.2 M-parameter SAM with segment-anything's real modules (milliseconds per image)."""
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(seed)
    grid = img_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=2, embed_dim=64, img_size=img_size, num_heads=2, patch_size=16, window_size=4,
            global_attn_indexes=(1,), use_rel_pos=True, out_chans=32,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=32, image_embedding_size=(grid, grid), input_image_size=(img_size, img_size), mask_in_chans=16
        ),
        mask_decoder=MaskDecoder(
            transformer_dim=32,
            transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2),
            iou_head_hidden_dim=32,
        ),
    )


# A GroundingDINO config with the real architecture (SwinT backbone, text enhancer, fusion, two-stage queries)
# at the smallest size it builds with: one encoder and one decoder layer, 16 queries. hidden_dim stays 256
# (the text position embedding is hard-coded to 256 features). Random weights: ~31 M parameters, ~110 MB.
TINY_DINO_OVERRIDES = {
    "enc_layers": 1, "dec_layers": 1, "dim_feedforward": 128, "num_queries": 16, "enc_n_points": 2,
    "dec_n_points": 2, "use_checkpoint": False, "use_transformer_ckpt": False,
}


def write_tiny_groundingdino(directory: Path, bert_dir: Path, seed: int = 0) -> tuple[Path, Path]:
    """``(config.py, checkpoint.pth)`` of a small random GroundingDINO, loadable by ``build_groundingdino``."""
    import groundingdino

    from mace_core.grounded_sam import build_groundingdino

    directory.mkdir(parents=True, exist_ok=True)
    base = Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py"
    lines = []
    for line in base.read_text(encoding="utf-8").splitlines():
        name = line.split("=")[0].strip()
        lines.append(f"{name} = {TINY_DINO_OVERRIDES[name]!r}" if name in TINY_DINO_OVERRIDES else line)
    config = directory / "tiny_groundingdino.py"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    torch.manual_seed(seed)
    model = build_groundingdino(config, None, bert_dir)
    checkpoint = directory / "tiny_groundingdino.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    return config, checkpoint


def write_tiny_sam(path: Path, img_size: int = 64, seed: int = 0) -> Path:
    """A checkpoint of :func:`tiny_sam` (a plain state dict, as SAM's own ``.pth`` files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tiny_sam(img_size, seed).state_dict(), path)
    return path
