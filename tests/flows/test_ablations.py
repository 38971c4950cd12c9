"""The paper's ablations as config switches: "CFR only" (lora.enabled=false) and "LoRA only" (cfr.enabled=false)."""

from __future__ import annotations

import torch

from tests.flows.conftest import final_weights, make_config


def _w0(model: str) -> dict:
    from mace_core.models import load_pipeline
    from mace_core.unet_layers import get_projection_weights

    return get_projection_weights(load_pipeline(model).unet)


def test_cfr_only_is_exactly_w0_times_m_and_trains_no_lora(tiny_model, store_root, counting):
    from flows.erase import erase
    from tasks._cache import open_store
    from tasks.cfr import load_remap

    report = erase(make_config(tiny_model, store_root, lora={"enabled": False}))
    assert not [k for k in report.refs if k.startswith("lora/")]
    assert counting.get("train_concept_lora", 0) == 0
    store = open_store(store_root)
    M = load_remap(store, store.get(*report.refs["cfr"].split("/"))).double()
    W0, W = _w0(tiny_model), final_weights(store_root, report)
    assert W.keys() == W0.keys()
    for n in W0:
        torch.testing.assert_close(W[n].double(), W0[n].double() @ M, rtol=1e-6, atol=1e-7)


def test_lora_only_uses_identity_remap_and_differs_from_full(tiny_model, store_root):
    from flows.erase import erase
    from tasks._cache import open_store
    from tasks.cfr import load_remap

    lora_only = erase(make_config(tiny_model, store_root, cfr={"enabled": False}))
    store = open_store(store_root)
    M = load_remap(store, store.get(*lora_only.refs["cfr"].split("/")))
    assert torch.equal(M, torch.eye(M.shape[0], dtype=M.dtype))
    full = erase(make_config(tiny_model, store_root, name="full"))
    assert lora_only.refs["cfr"] != full.refs["cfr"]
    a, b = final_weights(store_root, lora_only), final_weights(store_root, full)
    assert any(not torch.equal(a[k], b[k]) for k in a)
