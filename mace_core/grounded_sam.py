"""Grounded-SAM concept masks: GroundingDINO boxes for the concept phrase, SAM masks inside them (spec Stage B).

Per image (spec Stage B, with the input defects of spec 6.7 fixed):

1. GroundingDINO input: RGB, shorter side resized to 800 px (longer side at most 1333), ``[0, 1]`` tensor,
   ImageNet mean/std normalisation (the official code fed the raw 512 px ``[0, 1]`` tensor);
   caption = the phrase lower-cased + ``" ."``.
2. Boxes: a query is kept when its highest token probability exceeds ``box_threshold``; its normalised
   ``(cx, cy, w, h)`` box becomes pixel ``(x0, y0, x1, y1)`` in the original image. ``text_threshold`` picks
   the phrase label recorded for each box (as in GroundingDINO's ``predict``).
3. SAM input: the uint8 RGB image itself through ``SamPredictor.set_image`` (the official code mapped
   ``[0, 1]`` to a washed-out ``[127, 255]``), boxes through ``predictor.transform.apply_boxes_torch``, one
   mask per box (``multimask_output=False``).
4. The concept mask is the union (OR) of all box masks. With no box: ``on_empty="full"`` gives an all-ones
   mask (the paper's behaviour), ``on_empty="skip"`` gives ``None`` (drop the image); either way the
   :class:`Detection` record says so.

Models are loaded once by :meth:`GroundedSam.load` and reused for every image and concept.

transformers 5 compatibility: ``groundingdino-py`` 0.4.0 wraps ``BertModel`` and reads three helpers that
transformers 5 removed (``get_extended_attention_mask``, ``invert_attention_mask``, ``get_head_mask``).
:func:`install_bert_compat` adds transformers-4-equivalent versions to ``BertModel`` when (and only when) they
are missing, so we do not need to pin transformers 4 (which diffusers 0.42's huggingface-hub rules out).

SAM-HQ: its checkpoints add modules to the mask decoder (``mask_decoder.hf_token``, ``hf_mlp``,
``compress_vit_feat``, ``embedding_encoder``, ``embedding_maskfeature``) that plain ``segment-anything``
cannot build. Such a checkpoint is detected by those keys; it is used through the ``segment_anything_hq``
package when that is installed (same registry and predictor API), otherwise :meth:`GroundedSam.load` raises
a one-line error naming the fix (``pip install segment-anything-hq``, or a plain SAM checkpoint).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import logging
import pickle
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
SAM_HQ_KEY_PREFIXES: tuple[str, ...] = (
    "mask_decoder.hf_token",
    "mask_decoder.hf_mlp",
    "mask_decoder.compress_vit_feat",
    "mask_decoder.embedding_encoder",
    "mask_decoder.embedding_maskfeature",
)
SAM_MODEL_TYPES: tuple[str, ...] = ("vit_b", "vit_l", "vit_h")
OnEmpty = Literal["full", "skip"]


# ---------------------------------------------------------------------------------------------------------
# transformers 5 shim for GroundingDINO's BertModelWarper
# ---------------------------------------------------------------------------------------------------------


def _get_extended_attention_mask(
    self: Any, attention_mask: torch.Tensor, input_shape: Any = None, device: Any = None, dtype: Any = None
) -> torch.Tensor:
    """transformers-4 semantics: 0/1 mask ``[B, L]`` or ``[B, L, L]`` -> additive ``[B, 1, (1|L), L]``."""
    dtype = dtype if dtype is not None else getattr(self, "dtype", torch.float32)
    if attention_mask.dim() == 3:  # GroundingDINO's sub-sentence (block-diagonal) masks
        extended = attention_mask[:, None, :, :]
    elif attention_mask.dim() == 2:
        extended = attention_mask[:, None, None, :]
    else:
        raise ValueError(
            f"attention_mask has shape {tuple(attention_mask.shape)}: expected [batch, L] or [batch, L, L]"
        )
    extended = extended.to(dtype=dtype)
    return (1.0 - extended) * torch.finfo(dtype).min


def _invert_attention_mask(self: Any, encoder_attention_mask: torch.Tensor) -> torch.Tensor:
    """transformers-4 semantics for cross-attention masks (same conversion as above)."""
    return _get_extended_attention_mask(self, encoder_attention_mask)


def _get_head_mask(
    self: Any, head_mask: torch.Tensor | None, num_hidden_layers: int, is_attention_chunked: bool = False
) -> list[None]:
    """No head pruning: ``[None] * num_hidden_layers`` (GroundingDINO never passes a head mask)."""
    if head_mask is not None:
        raise ValueError("head_mask is not supported by the transformers-5 compatibility shim: pass None")
    return [None] * num_hidden_layers


_BERT_COMPAT: dict[str, Callable[..., Any]] = {
    "get_extended_attention_mask": _get_extended_attention_mask,
    "invert_attention_mask": _invert_attention_mask,
    "get_head_mask": _get_head_mask,
}


def _accept_past_key_values_length(forward: Callable[..., Any]) -> Callable[..., Any]:
    """``BertEmbeddings.forward`` taking GroundingDINO's ``past_key_values_length`` (transformers >= 5.24 calls
    it ``cache_length``)."""

    @functools.wraps(forward)
    def wrapper(self: Any, *args: Any, past_key_values_length: int | None = None, **kwargs: Any) -> torch.Tensor:
        if past_key_values_length is not None:  # GroundingDINO's call; BertModel itself passes cache_length
            kwargs["cache_length"] = past_key_values_length
        return forward(self, *args, **kwargs)

    wrapper.mace_compat = True  # type: ignore[attr-defined]
    return wrapper


def install_bert_compat() -> list[str]:
    """Add the BertModel helpers removed in transformers 5, and let ``BertEmbeddings.forward`` take the keyword
    it renamed in 5.24 (idempotent; what a version still has is kept).

    Returns:
        the names added by this call (empty on transformers 4, or when already installed).
    """
    from transformers import BertModel
    from transformers.models.bert.modeling_bert import BertEmbeddings

    added = []
    for name, fn in _BERT_COMPAT.items():
        if not hasattr(BertModel, name):
            setattr(BertModel, name, fn)
            added.append(name)
    params = inspect.signature(BertEmbeddings.forward).parameters
    wrapped = getattr(BertEmbeddings.forward, "mace_compat", False)
    if not wrapped and "past_key_values_length" not in params and "cache_length" in params:
        BertEmbeddings.forward = _accept_past_key_values_length(BertEmbeddings.forward)
        added.append("BertEmbeddings.forward(past_key_values_length=)")
    if added:
        logger.debug("installed BertModel compatibility helpers: %s", added)
    return added


# ---------------------------------------------------------------------------------------------------------
# Preprocessing (pure functions, tested)
# ---------------------------------------------------------------------------------------------------------


def dino_resized_size(width: int, height: int, size: int = 800, max_size: int = 1333) -> tuple[int, int]:
    """``(new_w, new_h)``: shorter side ``size`` unless the longer side would exceed ``max_size``.

    Same rule as GroundingDINO's ``RandomResize([800], max_size=1333)`` (``get_size_with_aspect_ratio``).
    """
    lo, hi = float(min(width, height)), float(max(width, height))
    if hi / lo * size > max_size:
        size = int(round(max_size * lo / hi))
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def dino_input(image: Any, size: int = 800, max_size: int = 1333) -> torch.Tensor:
    """GroundingDINO's input for one PIL image: float32 ``[3, h', w']``, resized and ImageNet-normalised."""
    import torchvision.transforms.functional as TF

    rgb = image.convert("RGB")
    new_w, new_h = dino_resized_size(rgb.width, rgb.height, size, max_size)
    resized = TF.resize(rgb, [new_h, new_w])  # PIL bilinear, as the official transform
    return TF.normalize(TF.to_tensor(resized), IMAGENET_MEAN, IMAGENET_STD)


def boxes_to_xyxy(boxes_cxcywh: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Normalised ``[K, 4]`` (cx, cy, w, h) -> pixel ``[K, 4]`` (x0, y0, x1, y1), clipped to the image."""
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    cx, cy, w, h = (boxes_cxcywh.float() * scale).unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    xyxy[:, 0::2] = xyxy[:, 0::2].clamp(0, width)
    xyxy[:, 1::2] = xyxy[:, 1::2].clamp(0, height)
    return xyxy


def caption_for(phrase: str) -> str:
    """GroundingDINO caption of a concept phrase: lower-cased, stripped, ``" ."`` appended."""
    text = " ".join(str(phrase).split()).lower().rstrip(".").strip()
    if not text:
        raise ValueError(f"phrase {phrase!r} is empty: pass the concept name, e.g. 'cat'")
    return text + " ."


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------


def _require_file(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"{what} {str(p)!r} does not exist: give the path of the downloaded file")
    return p


def _safe_load(path: Path, what: str, trust: bool) -> Any:
    """``torch.load`` with ``weights_only=True`` unless the user trusts the file; one-line error otherwise."""
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{what} {str(path)!r} holds Python objects that need unsafe unpickling: if you trust the file, "
            "pass trust_checkpoints=True (or re-save it as a plain state dict)"
        ) from None


def _state_dict_of(obj: Any, what: str, path: Path) -> dict[str, torch.Tensor]:
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{what} {str(path)!r} is not a state dict (or {{'model': state dict}}): check the file")
    # strip DataParallel prefixes, as groundingdino.util.misc.clean_state_dict
    return {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}


def build_groundingdino(
    config_path: str | Path,
    checkpoint: str | Path | None,
    text_encoder_dir: str | Path,
    device: str = "cpu",
    trust_checkpoints: bool = False,
) -> torch.nn.Module:
    """GroundingDINO from its config file, a local BERT directory and (optionally) a checkpoint.

    Args:
        config_path: e.g. ``groundingdino/config/GroundingDINO_SwinT_OGC.py`` (ships with the package).
        checkpoint: ``groundingdino_swint_ogc.pth``; ``None`` keeps random weights (tests only).
        text_encoder_dir: local directory with a BERT model and tokenizer (``bert-base-uncased`` for the real
            checkpoint); never a hub id, so nothing is downloaded.
        device: torch device.
        trust_checkpoints: allow unsafe unpickling of the checkpoint.
    """
    # 1. validate paths before the slow imports
    config_path = _require_file(config_path, "GroundingDINO config")
    ckpt = _require_file(checkpoint, "GroundingDINO checkpoint") if checkpoint is not None else None
    bert_dir = Path(text_encoder_dir).expanduser()
    if not (bert_dir / "config.json").is_file():
        raise ValueError(
            f"GroundingDINO text encoder dir {str(bert_dir)!r} has no config.json: pass a local directory "
            "holding a BERT model and tokenizer (e.g. a saved bert-base-uncased)"
        )
    # 2. build (groundingdino prints while building: route its stdout to the debug log)
    install_bert_compat()
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig

    args = SLConfig.fromfile(str(config_path))
    args.device = device
    args.text_encoder_type = str(bert_dir)
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        model = build_model(args)
    if captured.getvalue().strip():
        logger.debug("groundingdino build output: %s", captured.getvalue().strip())
    # 3. weights: every detector parameter must come from the checkpoint
    if ckpt is None:
        logger.warning("GroundingDINO has random weights (no checkpoint): for tests only")
    else:
        state = _state_dict_of(_safe_load(ckpt, "GroundingDINO checkpoint", trust_checkpoints),
                               "GroundingDINO checkpoint", ckpt)
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith("bert.")]
        if missing:
            raise ValueError(
                f"GroundingDINO checkpoint {str(ckpt)!r} lacks {len(missing)} weights of this config "
                f"(e.g. {missing[0]!r}): use the checkpoint that matches {config_path.name}"
            )
        if result.unexpected_keys:
            logger.warning("GroundingDINO checkpoint: %d unused keys", len(result.unexpected_keys))
    return model.eval().to(device)


def build_sam(
    model_type: str | Callable[[], torch.nn.Module],
    checkpoint: str | Path | None,
    device: str = "cpu",
    trust_checkpoints: bool = False,
) -> tuple[torch.nn.Module, Any]:
    """SAM (ViT-B/L/H, or a custom builder) and its ``SamPredictor``; SAM-HQ via ``segment_anything_hq``.

    Args:
        model_type: ``"vit_b"`` | ``"vit_l"`` | ``"vit_h"``, or a zero-argument callable returning a
            ``segment_anything.modeling.Sam`` (tests build a tiny one).
        checkpoint: SAM or SAM-HQ ``.pth``; ``None`` keeps random weights (tests only).
        device: torch device.
        trust_checkpoints: allow unsafe unpickling of the checkpoint.

    Returns:
        ``(sam, predictor)``.
    """
    # 1. read the checkpoint first: its keys decide between SAM and SAM-HQ
    state = None
    if checkpoint is not None:
        path = _require_file(checkpoint, "SAM checkpoint")
        state = _state_dict_of(_safe_load(path, "SAM checkpoint", trust_checkpoints), "SAM checkpoint", path)
    is_hq = state is not None and any(k.startswith(SAM_HQ_KEY_PREFIXES) for k in state)
    # 2. pick the implementation
    if is_hq:
        try:
            import segment_anything_hq as impl
        except ImportError:
            raise ValueError(
                f"SAM checkpoint {str(checkpoint)!r} is a SAM-HQ checkpoint (has mask_decoder.hf_token ...), which "
                "plain segment-anything cannot load: pip install segment-anything-hq, or pass a SAM checkpoint"
            ) from None
        if callable(model_type):
            raise ValueError("a custom SAM builder cannot load a SAM-HQ checkpoint: "
                             "pass model_type='vit_b|vit_l|vit_h'")
    else:
        import segment_anything as impl
    if callable(model_type):
        sam = model_type()
    elif model_type in SAM_MODEL_TYPES:
        sam = impl.sam_model_registry[model_type](checkpoint=None)
    else:
        raise ValueError(f"sam_model_type {model_type!r} is unknown: use one of {', '.join(SAM_MODEL_TYPES)}")
    # 3. weights (strict: a ViT-B checkpoint in a ViT-H model must fail, not half-load)
    if state is None:
        logger.warning("SAM has random weights (no checkpoint): for tests only")
    else:
        try:
            sam.load_state_dict(state, strict=True)
        except RuntimeError:
            raise ValueError(
                f"SAM checkpoint {str(checkpoint)!r} does not match sam_model_type={model_type!r}: pass the "
                "model type the checkpoint was trained as (vit_b, vit_l or vit_h)"
            ) from None
    sam = sam.eval().to(device)
    return sam, impl.SamPredictor(sam)


# ---------------------------------------------------------------------------------------------------------
# The masker
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Detection:
    """What GroundingDINO found in one image and what was done about it (saved next to the mask).

    Attributes:
        n_boxes: boxes above ``box_threshold``.
        scores: their scores (max token probability), descending.
        boxes_xyxy: pixel boxes ``(x0, y0, x1, y1)`` in the original image.
        phrases: the caption words above ``text_threshold`` for each box.
        outcome: ``"detected"`` (union of box masks), ``"full"`` (nothing found, full mask) or
            ``"skipped"`` (nothing found, mask ``None``).
    """

    n_boxes: int
    scores: tuple[float, ...]
    boxes_xyxy: tuple[tuple[float, float, float, float], ...]
    phrases: tuple[str, ...]
    outcome: Literal["detected", "full", "skipped"]


class GroundedSam:
    """GroundingDINO + SAM, loaded once (:meth:`load`), applied per concept to a list of images (:meth:`masks`).

    Args:
        detector: a built GroundingDINO model (eval mode).
        predictor: a ``SamPredictor`` (``segment_anything`` or ``segment_anything_hq``).
        device: torch device of both models.
        dino_size: GroundingDINO's shorter-side size (800 as trained; tests use less).
        dino_max_size: its longer-side cap (1333).
    """

    def __init__(
        self, detector: torch.nn.Module, predictor: Any, device: str = "cpu", dino_size: int = 800,
        dino_max_size: int = 1333,
    ) -> None:
        self.detector = detector
        self.predictor = predictor
        self.device = device
        self.dino_size = int(dino_size)
        self.dino_max_size = int(dino_max_size)

    @classmethod
    def load(
        cls,
        groundingdino_config: str | Path,
        groundingdino_checkpoint: str | Path | None,
        text_encoder_dir: str | Path,
        sam_checkpoint: str | Path | None,
        sam_model_type: str | Callable[[], torch.nn.Module] = "vit_h",
        device: str = "cpu",
        dino_size: int = 800,
        dino_max_size: int = 1333,
        trust_checkpoints: bool = False,
    ) -> GroundedSam:
        """Build both models once (see :func:`build_groundingdino`, :func:`build_sam`)."""
        if not 256 <= int(dino_size) <= int(dino_max_size):
            raise ValueError(f"dino_size={dino_size} must lie in [256, dino_max_size={dino_max_size}]; 800 as trained")
        detector = build_groundingdino(
            groundingdino_config, groundingdino_checkpoint, text_encoder_dir, device, trust_checkpoints
        )
        _, predictor = build_sam(sam_model_type, sam_checkpoint, device, trust_checkpoints)
        return cls(detector, predictor, device, dino_size, dino_max_size)

    @torch.no_grad()
    def detect(
        self, image: Any, phrase: str, box_threshold: float, text_threshold: float
    ) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """GroundingDINO on one PIL image: ``(boxes_cxcywh[K, 4] normalised, scores[K], phrases)``, by score."""
        from groundingdino.util.utils import get_phrases_from_posmap

        caption = caption_for(phrase)
        x = dino_input(image, self.dino_size, self.dino_max_size).to(self.device)
        out = self.detector(x[None], captions=[caption])
        probs = out["pred_logits"][0].float().sigmoid().cpu()  # [Q, 256] per-token probabilities
        boxes = out["pred_boxes"][0].float().cpu()  # [Q, 4] normalised cxcywh
        scores = probs.max(dim=1).values
        keep = scores > box_threshold
        probs, boxes, scores = probs[keep], boxes[keep], scores[keep]
        order = scores.argsort(descending=True)
        probs, boxes, scores = probs[order], boxes[order], scores[order]
        tokenized = self.detector.tokenizer(caption)
        phrases = [
            get_phrases_from_posmap(p > text_threshold, tokenized, self.detector.tokenizer).replace(".", "").strip()
            for p in probs
        ]
        return boxes, scores, phrases

    @torch.no_grad()
    def segment(self, image_rgb: np.ndarray, boxes_xyxy: torch.Tensor) -> torch.Tensor:
        """SAM masks for pixel boxes on one uint8 ``[H, W, 3]`` RGB image: bool ``[K, H, W]``."""
        self.predictor.set_image(image_rgb, image_format="RGB")
        boxes = self.predictor.transform.apply_boxes_torch(boxes_xyxy.to(self.device), image_rgb.shape[:2])
        masks, _, _ = self.predictor.predict_torch(
            point_coords=None, point_labels=None, boxes=boxes, multimask_output=False
        )
        return masks[:, 0].bool().cpu()

    def masks(
        self,
        images: Sequence[Any],
        phrase: str,
        box_threshold: float = 0.3,
        text_threshold: float = 0.25,
        on_empty: OnEmpty = "full",
    ) -> tuple[list[np.ndarray | None], list[Detection]]:
        """Concept masks for ``images`` (module docstring, steps 1-4).

        Args:
            images: PIL images (any mode; converted to RGB).
            phrase: the concept phrase, e.g. "melania trump".
            box_threshold: keep boxes whose best token probability exceeds this (official 0.3).
            text_threshold: token probability for the recorded phrase labels (official 0.25).
            on_empty: ``"full"`` (all-ones mask, as the paper) or ``"skip"`` (``None``) when nothing is found.

        Returns:
            ``(masks, detections)``: per image a bool ``[H, W]`` array (or ``None`` when skipped) and its
            :class:`Detection`.
        """
        # 1. validate
        if on_empty not in ("full", "skip"):
            raise ValueError(f"on_empty={on_empty!r}: use 'full' (whole-image mask) or 'skip' (drop the image)")
        for name, thr in (("box_threshold", box_threshold), ("text_threshold", text_threshold)):
            if not 0.0 < float(thr) < 1.0:
                raise ValueError(f"{name}={thr} must lie in (0, 1), e.g. 0.3")
        if not images:
            raise ValueError("images is empty: pass the concept's training images")
        caption_for(phrase)
        masks: list[np.ndarray | None] = []
        records: list[Detection] = []
        for i, image in enumerate(images):
            if not hasattr(image, "convert"):
                raise TypeError(f"images[{i}] is {type(image).__name__}: pass PIL images")
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
            height, width = rgb.shape[:2]
            # 2. boxes
            boxes, scores, phrases = self.detect(image, phrase, box_threshold, text_threshold)
            xyxy = boxes_to_xyxy(boxes, width, height)
            record = dict(
                n_boxes=int(boxes.shape[0]),
                scores=tuple(round(float(s), 6) for s in scores),
                boxes_xyxy=tuple(tuple(round(float(v), 3) for v in b) for b in xyxy),
                phrases=tuple(phrases),
            )
            # 3./4. union of SAM masks, or the empty policy
            if boxes.shape[0] == 0:
                if on_empty == "full":
                    masks.append(np.ones((height, width), dtype=bool))
                    records.append(Detection(**record, outcome="full"))
                else:
                    masks.append(None)
                    records.append(Detection(**record, outcome="skipped"))
                logger.info("no %r detected in image %d: %s", phrase, i, records[-1].outcome)
                continue
            union = self.segment(rgb, xyxy).any(dim=0).numpy()
            masks.append(union)
            records.append(Detection(**record, outcome="detected"))
        return masks, records


def overlay_preview(
    image: Any,
    mask: np.ndarray | None,
    detection: Detection | None = None,
    colour: tuple[int, int, int] = (255, 0, 64),
    alpha: float = 0.45,
) -> Any:
    """A PIL RGB preview for the UI: ``mask`` tinted with ``colour`` over ``image``, boxes outlined.

    Args:
        image: the PIL image the mask was computed on.
        mask: bool ``[H, W]`` (``None`` for a skipped image: the preview is the image, boxes only).
        detection: its :class:`Detection` (boxes drawn when given).
        colour: RGB tint of masked pixels.
        alpha: tint opacity in [0, 1].
    """
    from PIL import Image, ImageDraw

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must lie in [0, 1]")
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    if mask is not None:
        if mask.shape != rgb.shape[:2]:
            raise ValueError(f"mask has shape {mask.shape}, image is {rgb.shape[:2]}: pass the mask of this image")
        tint = np.asarray(colour, dtype=np.float32)
        rgb = np.where(mask[..., None], (1 - alpha) * rgb + alpha * tint, rgb)
    preview = Image.fromarray(rgb.round().clip(0, 255).astype(np.uint8), "RGB")
    if detection is not None:
        draw = ImageDraw.Draw(preview)
        for box in detection.boxes_xyxy:
            draw.rectangle(box, outline=colour, width=2)
    return preview

