"""export.py and generate.py on tiny pipelines: save/reload round trip, seeded per-image generation."""

import numpy as np
import pytest
import torch

from mace_core.export import export_pipeline
from mace_core.generate import generate_images
from mace_core.models import load_pipeline
from mace_core.unet_layers import cross_attention_projections, get_projection_weights


def test_export_round_trip(tiny_pipes, family, tmp_path):
    pipe = tiny_pipes[family]
    w0 = get_projection_weights(pipe.unet)
    state0 = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    fused = {n: (w.double() + 0.1 * torch.randn(w.shape, generator=g, dtype=torch.float64)) for n, w in w0.items()}
    out = export_pipeline(pipe, fused, tmp_path / "erased")
    assert (out / "model_index.json").is_file()
    assert list((out / "unet").glob("*.safetensors"))
    # the caller's pipeline is restored
    assert all(torch.equal(v, state0[k]) for k, v in pipe.unet.state_dict().items())
    # the reloaded pipeline holds the fused weights, and nothing else changed
    back = load_pipeline(out)
    assert type(back) is type(pipe)
    w1 = get_projection_weights(back.unet)
    assert all(torch.equal(w1[n], fused[n].float()) for n in fused)
    state1 = back.unet.state_dict()
    changed = {k for k in state0 if not torch.equal(state0[k], state1[k])}
    assert changed == {f"{n}.weight" for n in cross_attention_projections(pipe.unet)}


def test_export_rejects_bad_weights_and_keeps_pipe(tiny_pipes, tmp_path):
    pipe = tiny_pipes["sd1"]
    name = cross_attention_projections(pipe.unet)[0]
    w0 = get_projection_weights(pipe.unet, [name])[name]
    with pytest.raises(ValueError, match="shape"):
        export_pipeline(pipe, {name: torch.zeros(2, 2)}, tmp_path / "x")
    with pytest.raises(ValueError, match="empty"):
        export_pipeline(pipe, {}, tmp_path / "x")
    assert not (tmp_path / "x").exists()
    assert torch.equal(get_projection_weights(pipe.unet, [name])[name], w0)


def _arr(img):
    return np.asarray(img).astype(np.int16)


def test_generate_is_seeded_per_image(tiny_pipes, family):
    pipe = tiny_pipes[family]
    kw = dict(steps=2, guidance_scale=7.5, height=32, width=32)
    done = []
    a = generate_images(pipe, ["a cat", "a dog", "a cat"], [1, 2, 3], batch_size=2,
                        progress=lambda d, n: done.append((d, n)), **kw)
    assert done == [(2, 3), (3, 3)]
    assert len(a) == 3 and a[0].size == (32, 32)
    # same (prompt, seed) -> same image, whatever the batch it is in
    b = generate_images(pipe, ["a cat"], [1], batch_size=1, **kw)
    assert np.abs(_arr(a[0]) - _arr(b[0])).max() <= 2
    c = generate_images(pipe, ["a cat", "a cat"], [3, 1], batch_size=2, **kw)
    assert np.abs(_arr(c[0]) - _arr(a[2])).max() <= 2 and np.abs(_arr(c[1]) - _arr(a[0])).max() <= 2
    # a different seed gives a different image
    assert np.abs(_arr(a[0]) - _arr(a[2])).max() > 2


def test_generate_rejects_mismatched_inputs(tiny_pipes):
    with pytest.raises(ValueError, match="equal length"):
        generate_images(tiny_pipes["sd1"], ["a cat"], [1, 2], steps=1, guidance_scale=1.0, batch_size=1)


def test_loaded_pipeline_samples_without_diffusers_progress_bars(tiny_pipes, tmp_path, capfd):
    """Stage bars and `mace generate` draw progress; diffusers' own bar per call would flood the terminal."""
    pipe = tiny_pipes["sd1"]
    out = export_pipeline(pipe, get_projection_weights(pipe.unet), tmp_path / "same")
    back = load_pipeline(out)
    capfd.readouterr()
    generate_images(back, ["a cat"], [0], steps=3, guidance_scale=2.0, batch_size=1)
    assert "it/s" not in capfd.readouterr().err
