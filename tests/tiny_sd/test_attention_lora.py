"""attention_loss.py and lora.py on tiny pipelines: capture, Eq. 3 loss, peft LoRA training, save/load."""

import copy
import json
import os

import pytest
import torch

from mace_core.attention_loss import AttentionCapture, masked_attention_loss
from mace_core.config import LoraConfig
from mace_core.lora import (
    LoraFactors,
    LoraTrainingData,
    _inject_lora,
    _lora_parameters,
    extract_lora_factors,
    load_lora,
    lora_delta,
    save_lora,
    train_concept_lora,
)
from mace_core.models import encode_prompts, load_pipeline
from mace_core.prompts import concept_token_mask
from mace_core.unet_layers import (apply_weights, cross_attention_modules, cross_attention_projections,
                                   get_projection_weights)
from tests.helpers.asserts import assert_close

PROMPTS = ["a photo of the cat", "a cat sitting on a mat", "an oil painting of a cat"]


def _data(n=3, size=32, seed=0, masks=True):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, size, size, generator=g) * 2 - 1
    m = None
    if masks:
        m = torch.zeros(n, 1, size, size)
        m[:, :, 4:20, 8:28] = 1
    return LoraTrainingData(images, m, PROMPTS, ["cat"] * len(PROMPTS))


def _unet_inputs(pipe, batch=2, seed=0):
    """Deterministic UNet inputs (noisy latents, timesteps, conditioning, SDXL added conditioning)."""
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, 16, 16, generator=g)
    t = torch.tensor([100, 700][:batch] + [300] * max(0, batch - 2))
    cond = encode_prompts(pipe, PROMPTS[:batch] + PROMPTS[: max(0, batch - len(PROMPTS))])
    added = None
    if pipe.unet.config.addition_embed_type == "text_time":
        added = {"text_embeds": torch.randn(batch, 32, generator=g),
                 "time_ids": torch.tensor([[32, 32, 0, 0, 32, 32]] * batch).float()}
    return latents, t, cond, added


def _forward(unet, inputs):
    latents, t, cond, added = inputs
    with torch.no_grad():
        return unet(latents, t, encoder_hidden_states=cond, added_cond_kwargs=added).sample


def _token_masks(pipe, prompts):
    return torch.stack([concept_token_mask(pipe.tokenizer, p, "cat") for p in prompts])


# --------------------------------------------------------------------------------------------------------- capture


def test_capture_records_every_cross_attention_and_restores(tiny_pipes, family):
    pipe = tiny_pipes[family]
    unet = pipe.unet
    inputs = _unet_inputs(pipe)
    before = {n: unet.get_submodule(n).processor for n in cross_attention_modules(unet)}
    reference = _forward(unet, inputs)
    with AttentionCapture(unet) as capture:
        out = _forward(unet, inputs)
    assert set(capture.probs) == set(cross_attention_modules(unet))
    for name, probs in capture.probs.items():
        heads = unet.get_submodule(name).heads
        assert probs.shape[:2] == (2, heads) and probs.shape[3] == 77
        assert probs.shape[2] in {16 * 16, 8 * 8, 4 * 4}
        assert_close(probs.sum(-1), torch.ones_like(probs.sum(-1)), rtol=0, atol=1e-5)
    # the explicit processor computes the same attention as the default one
    assert_close(out, reference, rtol=1e-4, atol=1e-5)
    assert {n: unet.get_submodule(n).processor for n in before} == before


def test_capture_restores_processors_on_error(tiny_pipes):
    unet = tiny_pipes["sd1"].unet
    before = {n: unet.get_submodule(n).processor for n in cross_attention_modules(unet)}
    with pytest.raises(RuntimeError, match="boom"):
        with AttentionCapture(unet):
            raise RuntimeError("boom")
    assert {n: unet.get_submodule(n).processor for n in before} == before


# --------------------------------------------------------------------------------------------------------- loss


def _random_probs(batch=2, heads=2, sizes=(16, 8, 4), length=77, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {f"l{s}": torch.rand(batch, heads, s * s, length, generator=g, dtype=torch.float64).softmax(-1)
            for s in sizes}


def _naive_loss(probs, token_mask, pixel_mask):
    """Reference: loop over elements and layers, index-select, torch.linalg.norm; mean over the batch."""
    batch = token_mask.shape[0]
    total = 0.0
    for b in range(batch):
        for p in probs.values():
            side = int(p.shape[2] ** 0.5)
            sel = p[b][:, :, token_mask[b]]
            if pixel_mask is not None:
                m = torch.nn.functional.interpolate(pixel_mask[b : b + 1].float(), size=(side, side), mode="nearest")
                sel = sel[:, (m > 0.5).flatten()]
            total = total + torch.linalg.norm(sel.flatten())
    return total / batch


def test_loss_matches_naive_reference():
    probs = _random_probs()
    tok = torch.zeros(2, 77, dtype=torch.bool)
    tok[0, [4, 5, 9, 30]] = True
    tok[1, [2, 10]] = True
    pix = torch.zeros(2, 1, 32, 32)
    pix[0, :, 0:16, 8:24] = 1
    pix[1, :, 20:32, 0:32] = 1
    assert_close(masked_attention_loss(probs, tok, pix), _naive_loss(probs, tok, pix), rtol=1e-12)
    assert_close(masked_attention_loss(probs, tok, None), _naive_loss(probs, tok, None), rtol=1e-12)
    # list input == dict input
    assert masked_attention_loss(list(probs.values()), tok, pix) == masked_attention_loss(probs, tok, pix)


def test_zero_masks_give_zero_loss_and_finite_grad():
    probs = {k: v.requires_grad_(True) for k, v in _random_probs().items()}
    tok = torch.ones(2, 77, dtype=torch.bool)
    loss = masked_attention_loss(probs, tok, torch.zeros(2, 1, 32, 32))
    assert loss.item() == 0.0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() and (p.grad == 0).all() for p in probs.values())
    assert masked_attention_loss(probs, torch.zeros(2, 77, dtype=torch.bool), None).item() == 0.0


def test_loss_depends_only_on_masked_pixels_and_tokens():
    probs = _random_probs()
    tok = torch.zeros(2, 77, dtype=torch.bool)
    tok[:, 5:8] = True
    pix = torch.zeros(2, 1, 32, 32)
    pix[:, :, :16] = 1  # top half
    base = masked_attention_loss(probs, tok, pix)
    outside = {k: v.clone() for k, v in probs.items()}
    for v in outside.values():
        hw = v.shape[2]
        v[:, :, hw // 2 :] += 1.0       # bottom half pixels, all tokens
        v[:, :, :, 20:] += 1.0          # unselected tokens, all pixels
    assert masked_attention_loss(outside, tok, pix) == base
    inside = {k: v.clone() for k, v in probs.items()}
    inside["l8"][:, :, 0, 6] += 1.0
    assert masked_attention_loss(inside, tok, pix) > base


def test_every_batch_element_counts():
    probs = _random_probs()
    tok = torch.zeros(2, 77, dtype=torch.bool)
    tok[:, 3:6] = True
    both = masked_attention_loss(probs, tok, None)
    single = [masked_attention_loss({k: v[b : b + 1] for k, v in probs.items()}, tok[b : b + 1], None)
              for b in range(2)]
    assert_close(both, (single[0] + single[1]) / 2, rtol=1e-12)
    changed = {k: v.clone() for k, v in probs.items()}
    changed["l4"][1, :, :, 4] += 0.5  # only element 1 (official code would ignore it)
    assert masked_attention_loss(changed, tok, None) > both


def test_loss_rejects_mismatched_shapes():
    probs = _random_probs()
    with pytest.raises(TypeError, match="BoolTensor"):
        masked_attention_loss(probs, torch.zeros(2, 77), None)
    with pytest.raises(ValueError, match="do not match"):
        masked_attention_loss(probs, torch.zeros(3, 77, dtype=torch.bool), None)
    with pytest.raises(ValueError, match="pixel_mask"):
        masked_attention_loss(probs, torch.zeros(2, 77, dtype=torch.bool), torch.zeros(2, 32, 32))


# --------------------------------------------------------------------------------------------------------- LoRA


def _fixed_loss(pipe, unet, data, seed=0):
    """Eq. 3 loss of ``unet`` on a fixed batch (every image, prompt i % P, timesteps 100/300/500)."""
    g = torch.Generator().manual_seed(seed)
    n = data.images.shape[0]
    with torch.no_grad():
        z = pipe.vae.encode(data.images).latent_dist.mean * pipe.vae.config.scaling_factor
        prompts = [data.prompts[i % len(data.prompts)] for i in range(n)]
        cond = encode_prompts(pipe, prompts)
        t = torch.tensor([100, 300, 500] * n)[:n]
        noisy = pipe.scheduler.add_noise(z, torch.randn(z.shape, generator=g), t)
        with AttentionCapture(unet) as capture:
            unet(noisy, t, encoder_hidden_states=cond)
        return masked_attention_loss(capture.probs, _token_masks(pipe, prompts), data.masks).item()


def _merged_unet(unet, factors: LoraFactors):
    merged = copy.deepcopy(unet)
    w = get_projection_weights(merged, list(factors.factors))
    apply_weights(merged, {n: w[n] + factors.delta(n) for n in factors.factors})
    return merged


def test_training_lowers_the_attention_loss_and_leaves_pipe_untouched(tiny_pipes):
    pipe = tiny_pipes["sd1"]
    data = _data()
    before = {k: v.clone() for k, v in pipe.components["unet"].state_dict().items()}
    te_before = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items()}
    losses = []
    cfg = LoraConfig(steps=25, learning_rate=3e-2, batch_size=2)
    factors = train_concept_lora(pipe, {}, data, cfg, seed=0, progress=lambda s, n, v: losses.append((s, n, v)))
    assert [s for s, _, _ in losses] == list(range(1, 26)) and all(n == 25 for _, n, _ in losses)
    assert set(factors.factors) == set(cross_attention_projections(pipe.unet))
    assert factors.rank == 1 and factors.scale == 1.0
    base_loss = _fixed_loss(pipe, pipe.unet, data)
    trained_loss = _fixed_loss(pipe, _merged_unet(pipe.unet, factors), data)
    assert trained_loss < 0.97 * base_loss, (base_loss, trained_loss)
    # the caller's pipeline is unchanged and got no gradients
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())
    assert all(torch.equal(v, te_before[k]) for k, v in pipe.text_encoder.state_dict().items())
    assert all(p.grad is None for p in pipe.unet.parameters())
    assert not any(hasattr(m, "lora_A") for m in pipe.unet.modules())


def test_gradients_reach_only_lora_parameters(tiny_pipes, family):
    pipe = tiny_pipes[family]
    unet = copy.deepcopy(pipe.unet).requires_grad_(False)
    names = cross_attention_projections(unet)
    _inject_lora(unet, names, rank=2, generator=torch.Generator().manual_seed(0))
    params = _lora_parameters(unet, names)
    for p in params:
        p.requires_grad_(True)
    with torch.no_grad():  # non-zero up so that every factor receives a gradient
        for name in names:
            unet.get_submodule(name).lora_B["default"].weight.normal_(0, 0.1)
    snapshot = {n: p.detach().clone() for n, p in unet.named_parameters()}
    latents, t, cond, added = _unet_inputs(pipe)
    with AttentionCapture(unet) as capture:
        unet(latents, t, encoder_hidden_states=cond, added_cond_kwargs=added)
    loss = masked_attention_loss(capture.probs, _token_masks(pipe, PROMPTS[:2]), None)
    loss.backward()
    lora_ids = {id(p) for p in params}
    for n, p in unet.named_parameters():
        if id(p) not in lora_ids:
            assert p.grad is None, n
    by_name = {f"{name}.{part}": p for name in names for part, p in
               zip(("lora_A", "lora_B"), _lora_parameters(unet, [name]))}
    # to_k adapters get gradient directly from the probabilities; to_v adapters through later layers' queries
    # (the last executed attn2's to_v influences no probability, so it legitimately gets none)
    for key, p in by_name.items():
        if ".to_k." in key:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, key
    v_grads = [p.grad for key, p in by_name.items() if ".to_v." in key]
    assert sum(g is not None and g.abs().sum() > 0 for g in v_grads) >= len(v_grads) // 2
    assert all(torch.equal(p, snapshot[n]) for n, p in unet.named_parameters())
    assert all(p.grad is None for p in pipe.unet.parameters())


def test_fixed_seed_is_bit_identical_and_seed_matters(tiny_pipes, family):
    pipe = tiny_pipes[family]
    data = _data(n=2)
    cfg = LoraConfig(steps=3, learning_rate=1e-2, batch_size=2)
    state = torch.random.get_rng_state()
    a = train_concept_lora(pipe, {}, data, cfg, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is neither used nor advanced
    b = train_concept_lora(pipe, {}, data, cfg, seed=7)
    c = train_concept_lora(pipe, {}, data, cfg, seed=8)
    for name in a.factors:
        assert all(torch.equal(x, y) for x, y in zip(a.factors[name], b.factors[name], strict=True))
    assert any(not torch.equal(a.factors[n][0], c.factors[n][0]) for n in a.factors)


def test_training_uses_base_weights_without_touching_pipe(tiny_pipes):
    pipe = tiny_pipes["sd2"]
    data = _data(n=2, masks=False)
    cfg = LoraConfig(steps=2, learning_rate=1e-2, cfis=False)
    w0 = get_projection_weights(pipe.unet)
    base = {n: w * 0.5 for n, w in w0.items()}
    a = train_concept_lora(pipe, {}, data, cfg, seed=1)
    b = train_concept_lora(pipe, base, data, cfg, seed=1)
    assert any(not torch.equal(a.factors[n][1], b.factors[n][1]) for n in a.factors)
    assert all(torch.equal(get_projection_weights(pipe.unet)[n], w0[n]) for n in w0)
    with pytest.raises(ValueError, match="not cross-attention projections"):
        train_concept_lora(pipe, {"conv_in": torch.zeros(1)}, data, cfg, seed=1)


def test_training_data_validation():
    images = torch.zeros(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        LoraTrainingData(images + 2, None, ["a cat"], ["cat"])
    with pytest.raises(ValueError, match="only 0 and 1"):
        LoraTrainingData(images, torch.full((2, 1, 32, 32), 0.5), ["a cat"], ["cat"])
    with pytest.raises(ValueError, match="equal"):
        LoraTrainingData(images, None, ["a cat"], ["cat", "dog"])


def test_zero_lora_is_identity_and_merge_equals_unmerged(tiny_pipes, family):
    pipe = tiny_pipes[family]
    inputs = _unet_inputs(pipe)
    reference = _forward(pipe.unet, inputs)
    unet = copy.deepcopy(pipe.unet)
    names = cross_attention_projections(unet)
    _inject_lora(unet, names, rank=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(_forward(unet, inputs), reference)  # up = 0 at init: exactly no change
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in names:
            up = unet.get_submodule(name).lora_B["default"].weight
            up.copy_(torch.randn(up.shape, generator=g) * 0.2)
    unmerged = _forward(unet, inputs)
    factors = extract_lora_factors(unet, names)
    merged = _forward(_merged_unet(pipe.unet, factors), inputs)
    assert not torch.allclose(unmerged, reference, atol=1e-4)
    assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)


def test_lora_delta_and_factors_validation():
    down, up = torch.randn(2, 5), torch.randn(3, 2)
    assert_close(lora_delta(down, up, 0.5), 0.5 * up @ down, rtol=1e-7)
    with pytest.raises(ValueError, match="down"):
        lora_delta(up, down)
    with pytest.raises(ValueError, match="ranks"):
        LoraFactors({"a": (torch.zeros(1, 4), torch.zeros(3, 1)), "b": (torch.zeros(2, 4), torch.zeros(3, 2))})


def _random_factors(unet, rank=2, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for name, w in get_projection_weights(unet).items():
        factors[name] = (torch.randn(rank, w.shape[1], generator=g) * 0.3,
                         torch.randn(w.shape[0], rank, generator=g) * 0.3)
    return LoraFactors(factors, scale=scale)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_saved_lora_loads_in_diffusers_and_changes_exactly_delta(tiny_dirs, family, tmp_path, scale):
    pipe = load_pipeline(tiny_dirs[family])  # a private pipeline: load_lora_weights mutates it
    factors = _random_factors(pipe.unet, scale=scale)
    save_lora(factors, tmp_path)
    back = load_lora(tmp_path)
    assert back.scale == scale and back.rank == 2 and set(back.factors) == set(factors.factors)
    for n, (d, u) in factors.factors.items():
        assert torch.equal(back.factors[n][0], d) and torch.equal(back.factors[n][1], u)

    w0 = get_projection_weights(pipe.unet)
    state0 = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    pipe.load_lora_weights(str(tmp_path))
    pipe.fuse_lora(lora_scale=1.0)
    pipe.unload_lora_weights()
    w1 = get_projection_weights(pipe.unet)
    for n in w0:
        assert_close(w1[n], w0[n] + factors.delta(n), rtol=1e-5, atol=1e-6, msg=n)
    state1 = pipe.unet.state_dict()
    assert set(state1) == set(state0)
    changed = {k for k in state0 if not torch.equal(state0[k], state1[k])}
    assert changed == {f"{n}.weight" for n in w0}


def test_load_lora_rejects_missing_file(tmp_path):
    with pytest.raises(ValueError, match="save_lora"):
        load_lora(tmp_path)


def test_saved_lora_bytes_do_not_depend_on_the_process(tmp_path):
    """safetensors orders metadata keys by a per-process hash: save_lora canonicalises the header so equal
    factors give equal bytes (content-addressed artifacts depend on it). Two fresh processes must agree."""
    import subprocess
    import sys

    script = (
        "import sys, torch; from mace_core.lora import LoraFactors, save_lora\n"
        "g = torch.Generator().manual_seed(0)\n"
        "f = {f'down_blocks.{i}.attn2.to_k': (torch.randn(1, 8, generator=g), torch.randn(16, 1, generator=g))"
        " for i in range(3)}\n"
        "save_lora(LoraFactors(f, scale=0.5), sys.argv[1])\n"
    )
    outs = []
    for i in range(2):
        d = tmp_path / f"p{i}"
        subprocess.run([sys.executable, "-c", script, str(d)], check=True, env={**os.environ, "PYTHONHASHSEED": str(i)})
        outs.append((d / "pytorch_lora_weights.safetensors").read_bytes())
    assert outs[0] == outs[1]
    n = int.from_bytes(outs[0][:8], "little")
    meta = json.loads(outs[0][8:8 + n])["__metadata__"]
    assert list(meta) == sorted(meta) and len(meta) >= 2
