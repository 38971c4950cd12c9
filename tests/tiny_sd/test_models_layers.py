"""models.py and unet_layers.py on tiny SD1 / SD2 / SDXL pipelines: discovery, encoding, weight writes, loading."""

import copy

import pytest
import torch
from diffusers.models.attention_processor import Attention

from mace_core.models import context_dim, encode_prompts, load_pipeline, tokenizers_of
from mace_core.unet_layers import apply_weights, cross_attention_projections, get_projection_weights
from tests.helpers.asserts import assert_close

# attn2 modules per family, from the fixture configs: sd1 down 2 + up 4 + mid 1; sd2 down 1 + up 2 + mid 1;
# sdxl (2 transformer layers per block) down 2 + up 4 + mid 2.
EXPECTED_MODULES = {"sd1": 7, "sd2": 4, "sdxl": 8}
EXPECTED_DIM = {"sd1": 32, "sd2": 48, "sdxl": 64}


def _walk_cross_attention(unet):
    return [n for n, m in unet.named_modules() if isinstance(m, Attention) and m.is_cross_attention]


def test_projection_discovery_matches_walk(tiny_pipes, family):
    unet = tiny_pipes[family].unet
    names = cross_attention_projections(unet)
    walked = _walk_cross_attention(unet)
    n = len(walked)
    assert n == EXPECTED_MODULES[family]
    assert len(names) == 2 * n
    # all to_v first, then all to_k, the same module order in both halves
    assert all(x.endswith(".to_v") for x in names[:n]) and all(x.endswith(".to_k") for x in names[n:])
    assert [x[: -len(".to_v")] for x in names[:n]] == [x[: -len(".to_k")] for x in names[n:]]
    assert sorted(x[: -len(".to_v")] for x in names[:n]) == sorted(walked)
    assert all(".attn2." in x for x in names)
    # spec order: down blocks, then up blocks, then the mid block
    groups = [x.split(".")[0] for x in names[:n]]
    assert groups == sorted(groups, key=["down_blocks", "up_blocks", "mid_block"].index)
    assert groups[-1] == "mid_block"


def test_projection_names_are_peft_targets(tiny_pipes, family):
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    unet = copy.deepcopy(tiny_pipes[family].unet)
    names = cross_attention_projections(unet)
    inject_adapter_in_model(LoraConfig(r=1, lora_alpha=1, target_modules=names), unet)
    adapted = sorted(n for n, m in unet.named_modules() if isinstance(m, LoraLayer))
    assert adapted == sorted(names)
    # discovery still works through the peft wrappers and reads the base weight
    assert cross_attention_projections(unet) == names
    w = get_projection_weights(unet, names[:1])[names[0]]
    assert torch.equal(w, get_projection_weights(tiny_pipes[family].unet, names[:1])[names[0]])


def test_encode_prompts_equals_unet_conditioning(tiny_pipes, family):
    pipe = tiny_pipes[family]
    prompts = ["a photo of a cat", "an oil painting of a red truck in the snow"]
    seen = {}

    def hook(module, args, kwargs):
        seen["ehs"] = kwargs["encoder_hidden_states"].detach().clone()

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        # guidance 1.0: no classifier-free guidance, so the UNet sees exactly the prompt conditioning
        pipe(prompts, num_inference_steps=1, guidance_scale=1.0, height=32, width=32, output_type="latent")
    finally:
        handle.remove()
    enc = encode_prompts(pipe, prompts)
    assert enc.shape == (2, 77, EXPECTED_DIM[family]) == (2, 77, context_dim(pipe))
    assert torch.equal(enc, seen["ehs"])
    assert_close(encode_prompts(pipe, prompts, batch_size=1), enc, rtol=1e-5, atol=1e-6)


def test_tokenizers_of(tiny_pipes, family):
    toks = tokenizers_of(tiny_pipes[family])
    assert len(toks) == (2 if family == "sdxl" else 1)
    assert toks[0].model_max_length == 77
    pads = [t.pad_token for t in toks]
    assert pads == {"sd1": ["<|endoftext|>"], "sd2": ["!"], "sdxl": ["<|endoftext|>", "!"]}[family]


def test_apply_weights_changes_exactly_those_modules(tiny_pipes, family):
    unet = copy.deepcopy(tiny_pipes[family].unet)
    names = cross_attention_projections(unet)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    chosen = [names[0], names[-1]]
    new = {n: torch.randn(w.shape, generator=g, dtype=torch.float64)
           for n, w in get_projection_weights(unet, chosen).items()}
    apply_weights(unet, new)
    after = unet.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == sorted(f"{n}.weight" for n in chosen)
    for n in chosen:
        assert after[f"{n}.weight"].dtype == torch.float32
        assert torch.equal(after[f"{n}.weight"], new[n].float())


def test_get_projection_weights_returns_clones(tiny_pipes):
    unet = copy.deepcopy(tiny_pipes["sd1"].unet)
    name = cross_attention_projections(unet)[0]
    w = get_projection_weights(unet, [name])[name]
    w.add_(1.0)
    assert not torch.equal(get_projection_weights(unet, [name])[name], w)


def test_apply_weights_rejects_bad_input_before_writing(tiny_pipes):
    unet = copy.deepcopy(tiny_pipes["sd1"].unet)
    names = cross_attention_projections(unet)
    w0 = get_projection_weights(unet)
    good = {names[0]: w0[names[0]] + 1}
    with pytest.raises(ValueError, match="shape"):
        apply_weights(unet, {**good, names[1]: torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="not found"):
        apply_weights(unet, {**good, "down_blocks.9.attn2.to_k": w0[names[0]]})
    with pytest.raises(TypeError, match="floating-point"):
        apply_weights(unet, {**good, names[1]: w0[names[1]].long()})
    with pytest.raises(ValueError, match="NaN"):
        apply_weights(unet, {**good, names[1]: w0[names[1]] * float("nan")})
    # nothing was written by the failed calls
    assert all(torch.equal(get_projection_weights(unet)[n], w0[n]) for n in names)


def test_load_pipeline_rejects_non_diffusers_dir(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ValueError, match="model_index.json") as err:
        load_pipeline(tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_load_pipeline_rejects_missing_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match="does not exist") as err:
        load_pipeline(str(missing))
    assert str(missing) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="does not exist"):
        load_pipeline("./relative/missing")


def test_load_pipeline_rejects_bad_dtype(tiny_dirs):
    with pytest.raises(ValueError, match="dtype"):
        load_pipeline(tiny_dirs["sd1"], dtype="float8")


@pytest.mark.parametrize("dtype,torch_dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_load_pipeline_half_precision(tiny_dirs, family, dtype, torch_dtype):
    pipe = load_pipeline(tiny_dirs[family], dtype=dtype)
    assert pipe.unet.dtype == torch_dtype
    assert pipe.text_encoder.dtype == torch_dtype
    assert pipe.vae.dtype == torch_dtype
    assert pipe.device.type == "cpu"
    assert get_projection_weights(pipe.unet)[cross_attention_projections(pipe.unet)[0]].dtype == torch_dtype
