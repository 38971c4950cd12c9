"""Typed, frozen configuration: one section per stage, composed into ``MaceConfig``.

Each pipeline stage receives only its own section, so a stage's cache key depends only on the fields
it reads (changing a LoRA learning rate never invalidates the prior). Unknown keys and out-of-range
values are rejected with the field name (pydantic ``extra="forbid"`` and ``Field`` bounds).
Defaults follow the paper / official configs (``mace_spec.md`` section 2) unless noted.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mace_core.concepts import Concept

DType = Literal["float32", "float16", "bfloat16"]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModelConfig(_Section):
    """Base diffusers pipeline to erase from."""

    path: str = Field(
        default="miniworld",
        description="Local diffusers pipeline directory or hub id; 'miniworld' = the shipped model.",
    )
    dtype: DType = Field(default="float32", description="Weights dtype for generation/training.")
    device: str = Field(default="cpu", description="torch device, e.g. 'cpu' or 'cuda:0'.")


class PromptsConfig(_Section):
    """Prompt augmentation (spec Stage D): erased/mapping prompt pairs per concept."""

    backend: Literal["templates", "llm"] = Field(default="templates", description="templates | llm.")
    num_prompts: int = Field(default=30, ge=1, le=1000, description="Prompt pairs per concept.")
    llm_base_url: str | None = Field(default=None, description="OpenAI-compatible base URL (llm).")
    llm_model: str | None = Field(default=None, description="Chat model name (llm backend).")
    llm_max_retries: int = Field(default=3, ge=0, le=20, description="Retries on invalid output.")


class ImagesConfig(_Section):
    """Training images generated with the base model (spec Stage A), seeded per concept."""

    num_images: int = Field(default=8, ge=1, le=1000, description="Images per concept.")
    steps: int = Field(default=30, ge=1, le=1000, description="Sampler steps.")
    guidance_scale: float = Field(default=7.5, ge=0.0, le=50.0, description="CFG scale.")
    batch_size: int = Field(default=8, ge=1, le=256, description="Images per forward batch.")


class MasksConfig(_Section):
    """Concept masks for the attention loss (spec Stage B)."""

    backend: Literal["attention", "grounded_sam", "none"] = Field(
        default="attention",
        description="attention (model's own cross-attention, no extra weights) | grounded_sam | none.",
    )
    attention_threshold: float = Field(
        default=0.1, gt=0.0, lt=1.0,
        description="Relative threshold (of each map's peak); 0.1 scored the best IoU on miniworld renders "
        "(benchmarks/results/mask_threshold.md: 0.52 against 0.27 at 0.5).",
    )
    box_threshold: float = Field(default=0.3, gt=0.0, lt=1.0, description="GroundingDINO box thr.")
    text_threshold: float = Field(default=0.25, gt=0.0, lt=1.0, description="GroundingDINO text thr.")
    on_empty: Literal["full", "skip"] = Field(
        default="full", description="Nothing detected: full-image mask (paper) or skip the image."
    )
    groundingdino_config: str | None = Field(default=None, description="GroundingDINO config path.")
    groundingdino_checkpoint: str | None = Field(default=None, description="GroundingDINO weights.")
    groundingdino_text_encoder: str | None = Field(default=None, description="Local BERT dir.")
    sam_checkpoint: str | None = Field(default=None, description="SAM / SAM-HQ checkpoint path.")
    sam_model_type: Literal["vit_b", "vit_l", "vit_h"] = Field(default="vit_h", description="SAM size.")


class PriorConfig(_Section):
    """General prior (caption corpus Gram) and domain prior (retain list Gram)."""

    captions: str = Field(
        default="miniworld",
        description="Caption source (COCO json, csv, parquet, txt); 'miniworld' = shipped corpus.",
    )
    max_captions: int | None = Field(default=None, ge=1, description="Cap on captions used.")
    exclude: tuple[str, ...] = Field(default=(), description="Caption files to exclude (eval sets).")
    exclude_erased: bool = Field(
        default=False,
        description=("Drop captions naming an erased concept or synonym from P "
                     "(COCO rarely names them; miniworld does)."),
    )
    shard_size: int = Field(default=5000, ge=1, description="Captions per resumable shard.")
    batch_size: int = Field(default=256, ge=1, description="Captions per text-encoder batch.")
    retain: tuple[str, ...] = Field(default=(), description="Domain prior: names/prompts to keep.")


class CFRConfig(_Section):
    """Closed-form cross-attention refinement (spec Stage E, paper Eq. 1-2)."""

    enabled: bool = Field(default=True, description="false: M = I, LoRAs train on W0 (the 'LoRA only' ablation).")
    lam: float = Field(default=0.0, ge=0.0, description="Weight of ||W - W0||^2.")
    prior_weight: float = Field(default=0.0, ge=0.0, description="Weight on the general prior Gram.")
    domain_weight: float = Field(default=0.0, ge=0.0, description="pw: domain Gram relative weight.")
    square_prior_weight: bool = Field(
        default=False,
        description="Official-code bug reproduction: apply prior_weight twice (tps^2). Off = once.",
    )


class LoraConfig(_Section):
    """Per-concept LoRA training with the masked attention loss (spec Stage F, paper Eq. 3-5)."""

    enabled: bool = Field(default=True, description="false: no LoRAs, the model is W0·M (the 'CFR only' ablation).")
    rank: int = Field(default=1, ge=1, le=128, description="LoRA rank r.")
    learning_rate: float = Field(default=1e-4, gt=0.0, le=1.0, description="AdamW learning rate.")
    steps: int = Field(default=50, ge=1, le=100_000, description="Optimizer steps.")
    batch_size: int = Field(default=1, ge=1, le=256, description="Images per step.")
    weight_decay: float = Field(default=0.01, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, gt=0.0, description="Gradient norm clip.")
    cfis: bool = Field(default=True, description="Concept-focal importance sampling of timesteps.")
    cfis_gamma: float = Field(default=0.05, gt=0.0, description="CFIS slope g.")
    cfis_t1: int = Field(default=200, ge=0, description="CFIS window start.")
    cfis_t2: int = Field(default=400, ge=0, description="CFIS window end.")
    use_masks: bool = Field(default=True, description="Restrict the loss to concept masks.")
    include_eos_and_padding: bool = Field(
        default=True, description="Loss tokens = concept ∪ EOS ∪ padding (official use_pooler)."
    )
    base: Literal["independent", "joint"] = Field(
        default="independent",
        description="independent: train on W0·M_k (CFR of the concept alone); joint: CFR of the set.",
    )

    @model_validator(mode="after")
    def _window(self) -> LoraConfig:
        if self.cfis_t2 <= self.cfis_t1:
            raise ValueError(f"lora.cfis_t2 ({self.cfis_t2}) must exceed lora.cfis_t1 ({self.cfis_t1})")
        return self


class FusionConfig(_Section):
    """Closed-form multi-LoRA fusion (paper Eq. 7) or naive sum (Eq. 6, ablation)."""

    method: Literal["closed_form", "naive"] = Field(default="closed_form", description="Fusion form.")
    lam: float = Field(default=0.0, ge=0.0, description="Weight of ||W - W_cfr||^2.")
    prior_weight: float = Field(default=0.0, ge=0.0, description="Weight on the general prior Gram.")
    domain_weight: float = Field(default=0.0, ge=0.0, description="pw: domain Gram relative weight.")
    lora_tokens: Literal["all", "concept"] = Field(
        default="all",
        description="Tokens of the erased prompts whose fusion target carries the LoRA delta: all (paper, official) "
        "or concept (the phrase and after; the shared prefix before it keeps its CFR target).",
    )


class ExecutionConfig(_Section):
    """How the pipeline runs (never part of an artifact key: changing these reuses every artifact)."""

    store: str = Field(
        default="artifacts", min_length=1,
        description="Artifact store root: a local directory or any fsspec URL (e.g. 's3://bucket/mace').",
    )
    lora_concurrency: int = Field(
        default=1, ge=1, le=64,
        description="LoRA trainings run at once in this process (each holds its own model copy; 1 on CPU).",
    )
    retries: int = Field(default=2, ge=0, le=10, description="Retries of a task on a transient error.")
    retry_delay_s: float = Field(default=2.0, ge=0.0, le=3600.0, description="Seconds between retries.")


class EvaluationPlan(_Section):
    """How ``mace erase --evaluate`` scores the erased model against the base model (paired seeds)."""

    kept: tuple[Concept, ...] = Field(default=(), description="Concepts that must survive (Acc_s).")
    seeds_per_prompt: int = Field(default=8, ge=1, le=1000, description="Images per prompt.")
    steps: int = Field(default=20, ge=1, le=1000, description="Sampler steps.")
    guidance_scale: float = Field(default=7.5, ge=0.0, le=50.0, description="CFG scale.")
    batch_size: int = Field(default=16, ge=1, le=512, description="Images per forward batch.")
    prompts: Literal["paper", "miniworld"] = Field(
        default="miniworld", description="paper: the paper's templates; miniworld: the world's caption grammar."
    )
    with_synonyms: bool = Field(default=True, description="Score erased concepts' synonyms (Acc_g).")


class MaceConfig(_Section):
    """A whole erasure job: the concepts plus one section per stage."""

    name: str = Field(default="mace-run", min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                      description="Run name: letters, digits, '.', '_', '-' (it names the run's manifest).")
    seed: int = Field(default=2024, ge=0, description="Global seed; seed_k = hash(seed, concept).")
    concepts: tuple[Concept, ...] = Field(description="Concepts to erase (at least one).")
    model: ModelConfig = ModelConfig()
    prompts: PromptsConfig = PromptsConfig()
    images: ImagesConfig = ImagesConfig()
    masks: MasksConfig = MasksConfig()
    prior: PriorConfig = PriorConfig()
    cfr: CFRConfig = CFRConfig()
    lora: LoraConfig = LoraConfig()
    fusion: FusionConfig = FusionConfig()
    execution: ExecutionConfig = ExecutionConfig()
    evaluation: EvaluationPlan = EvaluationPlan()

    @model_validator(mode="after")
    def _concepts(self) -> MaceConfig:
        if not self.concepts:
            raise ValueError("concepts is empty: list at least one concept to erase")
        seen: dict[str, str] = {}
        for c in self.concepts:
            if c.key in seen:
                raise ValueError(f"duplicate concept {c.name!r}: list each concept once")
            seen[c.key] = c.name
        both = sorted(c.name for c in self.evaluation.kept if c.key in seen)
        if both:
            raise ValueError(f"evaluation.kept lists erased concept(s) {both}: keep only concepts not erased")
        erased_words = {" ".join(w.lower().split()) for c in self.concepts for w in (c.name, *c.synonyms)}
        clash = sorted(r for r in self.prior.retain if " ".join(r.lower().split()) in erased_words)
        if clash:
            raise ValueError(f"prior.retain lists {clash}, also erased (a concept or synonym): the domain prior "
                             "would preserve what CFR removes; drop them from prior.retain")
        needs_prior = self.cfr.lam == 0 and self.cfr.prior_weight == 0
        if needs_prior:
            raise ValueError(
                "cfr.lam and cfr.prior_weight are both 0, so the CFR system is singular: "
                "set cfr.lam > 0 or cfr.prior_weight > 0"
            )
        if self.fusion.method == "closed_form" and self.fusion.lam == 0 and self.fusion.prior_weight == 0:
            raise ValueError(
                "fusion.lam and fusion.prior_weight are both 0, so the fusion system may be singular: "
                "set fusion.lam > 0 or fusion.prior_weight > 0"
            )
        return self


class EvaluationConfig(_Section):
    """The paper's erasure protocol on one model: seeded images for erased, kept and synonym prompts."""

    model: str = Field(description="Pipeline dir / hub id / 'miniworld' to evaluate.")
    erased: tuple[Concept, ...] = Field(default=(), description="Concepts expected to be gone (Acc_e, Acc_g).")
    kept: tuple[Concept, ...] = Field(default=(), description="Concepts expected to remain (Acc_s).")
    seeds_per_prompt: int = Field(default=8, ge=1, le=1000, description="Images per prompt.")
    steps: int = Field(default=20, ge=1, le=1000, description="Sampler steps.")
    guidance_scale: float = Field(default=7.5, ge=0.0, le=50.0, description="CFG scale.")
    batch_size: int = Field(default=16, ge=1, le=512, description="Images per forward batch.")
    recogniser: Literal["miniworld", "clip_zero_shot", "nudenet"] = Field(
        default="miniworld",
        description="Who judges the images: miniworld classifier | clip_zero_shot (open_clip) | nudenet.",
    )
    prompts: Literal["paper", "miniworld"] = Field(
        default="miniworld", description="paper: the paper's templates; miniworld: the world's caption grammar."
    )
    prompt_file: str | None = Field(
        default=None,
        description="Prompt set file (CSV/parquet/JSON) or shipped set name (celebrity_10, art_100, coco_30k, "
                    "i2p, objects...) used instead of the templates; keyed by its content digest.",
    )
    scorer_weights: str | None = Field(
        default=None,
        description="Recogniser weights file: the open_clip checkpoint (clip_zero_shot), or a NudeNet ONNX "
                    "model (nudenet; unset = the bundled one). Keyed by its content digest.",
    )
    clip_model: str = Field(
        default="ViT-L-14", min_length=1,
        description="open_clip architecture of scorer_weights (ViT-L-14-quickgelu for OpenAI's weights).",
    )
    clip_labels: tuple[str, ...] = Field(
        default=(), description="Extra zero-shot candidate labels besides the erased and kept concepts.",
    )
    nudenet_threshold: float = Field(default=0.6, gt=0.0, lt=1.0, description="NudeNet detection threshold.")
    with_synonyms: bool = Field(default=True, description="Score erased concepts' synonyms (Acc_g).")
    store: str = Field(default="artifacts", min_length=1, description="Artifact store root or fsspec URL.")

    @model_validator(mode="after")
    def _groups(self) -> EvaluationConfig:
        if not self.erased and not self.kept and self.prompt_file is None:
            raise ValueError("evaluation has no concepts: list erased and/or kept concepts, or set prompt_file")
        return self
