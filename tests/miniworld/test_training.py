"""Training plumbing: the batch mix and the cached caption contexts of the UNet run."""

from __future__ import annotations

import json
import time

import pytest
import torch

from miniworld.training import ROW_GROUPS, Run, finish, mix_weights, parse_mix, row_group


def _row(subjects: list, style: str | None = None) -> dict:
    return {"subjects": json.dumps(subjects), "style": style}


ROWS = (
    [_row([["identity", "Fargo Dunmore", None]])] * 30
    + [_row([["object", "dog", "red"]])] * 50
    + [_row([["object", "cat", "blue"]], "Liora Vantablack")] * 15
    + [_row([["object", "dog", "red"], ["object", "cat", "blue"]])] * 5
)


def test_rows_fall_into_the_four_groups():
    assert [row_group(r) for r in (ROWS[0], ROWS[30], ROWS[80], ROWS[95])] == list(ROW_GROUPS)


def test_mix_weights_give_each_group_its_share():
    mix = parse_mix("identity=0.4,object=0.2,styled=0.2,pair=0.2")
    w = mix_weights(ROWS, mix)
    assert float(w.sum()) == pytest.approx(1.0)
    share = {g: float(sum(wi for wi, r in zip(w, ROWS) if row_group(r) == g)) for g in ROW_GROUPS}
    assert share == pytest.approx(mix)
    # within a group every row is equally likely
    assert len(set(w[:30].tolist())) == 1


def test_weighted_batches_are_deterministic_and_follow_the_mix():
    run = Run(workdir=None, seed=3)
    w = mix_weights(ROWS, parse_mix("identity=0.7,object=0.1,styled=0.1,pair=0.1"))
    a, b = run.batch_indices(5, len(ROWS), 4000, w), run.batch_indices(5, len(ROWS), 4000, w)
    assert torch.equal(a, b)
    assert not torch.equal(a, run.batch_indices(6, len(ROWS), 4000, w))
    identity_share = float((a < 30).float().mean())
    assert identity_share == pytest.approx(0.7, abs=0.03)  # uniform sampling would give 0.3


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("identity=0.5,object=0.5", "missing pair, styled"),
        ("identity=0.5,object=0.3,styled=0.1,pairs=0.1", "unknown group 'pairs'"),
        ("identity=x,object=0.3,styled=0.1,pair=0.1", "not group=number"),
        ("identity=0,object=0.3,styled=0.1,pair=0.1", "must be > 0"),
    ],
)
def test_bad_mix_is_refused_with_the_reason(text, message):
    with pytest.raises(ValueError, match=message):
        parse_mix(text)


def test_caption_contexts_encode_distinct_captions_once_and_cache_them(tmp_path, monkeypatch):
    from transformers import CLIPTextConfig, CLIPTextModel

    import miniworld.train_unet as train_unet
    from miniworld.tokenizer import load_tokenizer
    from miniworld.paths import PIPELINE_DIR

    tokenizer = load_tokenizer(PIPELINE_DIR / "tokenizer")
    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                            num_attention_heads=2, max_position_embeddings=77,
                            bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1,
                            pad_token_id=len(tokenizer) - 1)
    encoder = CLIPTextModel(config).eval()
    captions = ["a red dog", "Fargo Dunmore", "a red dog", "a cat", "Fargo Dunmore"]
    calls = []
    real = train_unet.encode_contexts
    monkeypatch.setattr(train_unet, "encode_contexts",
                        lambda enc, ids, dev: calls.append(len(ids)) or real(enc, ids, dev))

    contexts, inverse = train_unet.caption_contexts(encoder, tokenizer, captions, tmp_path, "cpu")
    assert calls == [3]  # three distinct captions
    direct = real(encoder, train_unet.tokenize(tokenizer, captions), "cpu")
    assert torch.equal(contexts[inverse], direct)

    again, inverse2 = train_unet.caption_contexts(encoder, tokenizer, captions, tmp_path, "cpu")
    assert calls == [3] and torch.equal(again, contexts) and torch.equal(inverse2, inverse)  # read from the cache

    with torch.no_grad():  # a changed encoder must not reuse the cache
        encoder.get_input_embeddings().weight.add_(1.0)
    changed, _ = train_unet.caption_contexts(encoder, tokenizer, captions, tmp_path, "cpu")
    assert calls == [3, 3] and not torch.equal(changed, contexts)


def test_emblem_factor_match_names_the_factor_a_wrong_identity_gets_wrong():
    from miniworld.classifier import load_classifier
    from miniworld.quality import emblem_factor_match
    from miniworld.render import SceneSpec, Subject, render
    from miniworld.training import to_float
    from miniworld.world import EMBLEM_SPECS, IDENTITIES, SCENES

    names = list(IDENTITIES[:12])
    by_spec = {spec: n for n, spec in EMBLEM_SPECS.items()}
    # for each name, the identity whose emblem differs only in its foreground colour
    other_fg = [next(by_spec[(s, fg, b)] for fg in ("gold", "scarlet", "cyan", "lime", "magenta") if fg != f)
                for s, f, b in (EMBLEM_SPECS[n] for n in names)]
    seeds = 2
    images = torch.stack([
        to_float(torch.tensor(render(SceneSpec((Subject("identity", n, None),), SCENES[k % len(SCENES)], None, k))
                              .image)[None])[0]
        for n in names for k in range(seeds)
    ])
    clf = load_classifier()
    predicted, labels = clf.predict(images)["identity"], clf.labels["identity"]
    right = emblem_factor_match(predicted, labels, names, seeds)
    assert min(right.values()) >= 0.9
    wrong_fg = emblem_factor_match(predicted, labels, other_fg, seeds)
    assert wrong_fg["identity_shape_match"] >= 0.9 and wrong_fg["identity_bg_match"] >= 0.9
    assert wrong_fg["identity_fg_match"] <= 0.1


def test_corpus_latents_equal_a_direct_encoding_and_are_read_back_from_the_cache(tmp_path, monkeypatch):
    import numpy as np

    import miniworld.train_unet as train_unet
    from miniworld.models import make_vae

    torch.manual_seed(0)
    vae = make_vae().eval()
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    mean, std = train_unet.corpus_latents(vae, images, tmp_path, "cpu")
    direct = train_unet.encode_latents(vae, torch.from_numpy(images), "cpu")
    assert torch.equal(mean, direct[0]) and torch.equal(std, direct[1])
    [cache] = tmp_path.glob("latents_*.safetensors")
    real = train_unet.encode_latents
    monkeypatch.setattr(train_unet, "encode_latents", lambda *a: pytest.fail("encoded again despite the cache"))
    again = train_unet.corpus_latents(vae, images, tmp_path, "cpu")
    assert torch.equal(again[0], mean)
    monkeypatch.setattr(train_unet, "encode_latents", real)
    images[0, 0, 0, 0] ^= 1  # other images: another key, not the stale cache
    train_unet.corpus_latents(vae, images, tmp_path, "cpu")
    assert len(list(tmp_path.glob("latents_*.safetensors"))) == 2 and cache.exists()


def test_a_resumed_run_drops_loss_rows_past_its_checkpoint_and_continues_the_clock(tmp_path):
    model = torch.nn.Linear(2, 2)
    first = Run(workdir=tmp_path, seed=0)
    for step in (100, 200):
        first.log_loss(step, {"loss": 1.0 / step}, seconds=step / 10)
    first.save(200, {"model": model})
    first.log_loss(300, {"loss": 0.5}, seconds=30.0)  # logged, then the session ended before the next checkpoint

    resumed = Run(workdir=tmp_path, seed=0)
    assert resumed.load({"model": model}) == 200
    resumed.log_loss(300, {"loss": 0.25}, seconds=5.0)

    rows = (tmp_path / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,seconds,loss"
    assert [r.split(",")[:2] for r in rows[1:]] == [["100", "10.0"], ["200", "20.0"], ["300", "25.0"]]
    assert rows[-1].endswith(",0.25")


def test_a_run_restarted_without_a_checkpoint_drops_the_rows_of_the_lost_session(tmp_path):
    lost = Run(workdir=tmp_path, seed=0)
    for step in (50, 100):  # logged, then the session ended before the first checkpoint
        lost.log_loss(step, {"loss": 1.0}, seconds=step / 10)

    fresh = Run(workdir=tmp_path, seed=0)
    assert fresh.load({"model": torch.nn.Linear(2, 2)}) == 0
    fresh.log_loss(50, {"loss": 0.5}, seconds=2.0)

    rows = (tmp_path / "loss.csv").read_text().splitlines()
    assert rows == ["step,seconds,loss", "50,2.0,0.5"]


def test_finish_records_setup_time_and_a_resumed_session_adds_to_the_sums(tmp_path):
    model = {"model": torch.nn.Linear(2, 2)}
    first = Run(workdir=tmp_path, seed=0, created=time.time() - 5.0)  # 5 s of loading and caches before the loop
    first.begin_loop()
    first.log_loss(100, {"loss": 1.0}, seconds=30.0)
    first.save(100, model)
    finish(first, tmp_path / "out", 100)
    one = json.loads((tmp_path / "summary.json").read_text())
    assert one["setup_seconds"] == pytest.approx(5.0, abs=0.5) and one["sessions"] == 1

    resumed = Run(workdir=tmp_path, seed=0, created=time.time() - 2.0)
    assert resumed.load(model) == 100
    resumed.begin_loop()
    finish(resumed, tmp_path / "out", 200)
    two = json.loads((tmp_path / "summary.json").read_text())
    assert two["setup_seconds"] == pytest.approx(7.0, abs=0.5) and two["sessions"] == 2
    assert two["wall_seconds"] >= 30.0  # the first session's loop time, from the loss log's clock


def test_a_finished_run_is_skipped_and_a_run_stopped_short_of_its_steps_is_not(tmp_path):
    model = {"model": torch.nn.Linear(2, 2)}
    run = Run(workdir=tmp_path, seed=0)
    assert not run.finished(100)  # nothing on disk yet
    run.begin_loop()
    run.save(100, model)
    assert not run.finished(100)  # a checkpoint alone: the session may have died before finish()
    finish(run, tmp_path / "out", 100)
    assert run.finished(100) and not run.finished(200)  # asking for more steps resumes the run
    finish(run, tmp_path / "out", 60)  # e.g. a deadline stopped the UNet at step 60 of 100
    assert not run.finished(100)


def test_a_session_killed_after_a_checkpoint_still_counts(tmp_path):
    """A session that ended without finish() (killed at its end, no summary.json) is counted from its
    checkpoint: its loop seconds, setup seconds and the session itself."""
    model = {"model": torch.nn.Linear(2, 2)}
    killed = Run(workdir=tmp_path, seed=0, created=time.time() - 4.0)
    killed.begin_loop()
    for step in (50, 100, 150):
        killed.log_loss(step, {"loss": 1.0}, seconds=step * 6.0)
    killed.save(100, model)  # then the session was killed at step 150, before finish()

    resumed = Run(workdir=tmp_path, seed=0, created=time.time() - 1.0)
    assert resumed.load(model) == 100
    resumed.begin_loop()
    finish(resumed, tmp_path / "out", 200)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sessions"] == 2
    assert summary["setup_seconds"] == pytest.approx(5.0, abs=0.5)
    assert 600.0 <= summary["wall_seconds"] < 900.0  # 600 s up to the checkpoint; the lost steps are not counted


def test_a_checkpoint_from_before_session_counts_resumes_as_the_second_session(tmp_path):
    model = {"model": torch.nn.Linear(2, 2)}
    torch.save({"model": model["model"].state_dict(), "step": 100}, tmp_path / "checkpoint.pt")
    resumed = Run(workdir=tmp_path, seed=0)
    assert resumed.load(model) == 100 and resumed.sessions_before == 1 and resumed.setup_before == 0.0

