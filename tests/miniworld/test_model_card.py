"""The model card's budget arithmetic: what counts once, what adds up."""

from __future__ import annotations

import pytest

from miniworld.model_card import elapsed_seconds, run_seconds


def test_run_seconds_adds_setup_to_the_loop_and_tolerates_runs_that_predate_setup():
    assert run_seconds({"wall_seconds": 100.0, "setup_seconds": 20.0}) == 120.0
    assert run_seconds({"wall_seconds": 100.0}) == 100.0


def test_side_by_side_models_count_once_and_the_rest_add_up():
    summaries = {"vae": {"wall_seconds": 1500.0}, "clip": {"wall_seconds": 1600.0},
                 "sharpen_text": {"wall_seconds": 500.0, "setup_seconds": 50.0},
                 "unet": {"wall_seconds": 4000.0, "setup_seconds": 300.0}}
    assert elapsed_seconds(summaries) == pytest.approx(1600.0 + 550.0 + 4300.0)
    assert elapsed_seconds(summaries) < sum(run_seconds(s) for s in summaries.values())


def test_the_loss_plot_has_one_panel_per_model_with_a_log(tmp_path):
    """A TEXT_ONLY world trains no VAE or classifier: their panels are left out, not drawn empty."""
    from PIL import Image

    from miniworld.model_card import plot_losses

    (tmp_path / "clip_loss.csv").write_text("step,seconds,loss\n100,1.0,7.0\n200,2.0,6.0\n")
    (tmp_path / "unet_loss.csv").write_text("step,seconds,loss\n100,1.0,0.2\n200,2.0,0.1\n")
    plot_losses(tmp_path)
    two = Image.open(tmp_path / "loss_curves.png").size
    (tmp_path / "vae_loss.csv").write_text("step,seconds,loss\n100,1.0,3.0\n200,2.0,2.0\n")
    plot_losses(tmp_path)
    three = Image.open(tmp_path / "loss_curves.png").size
    assert two[1] == three[1] and three[0] * 2 == two[0] * 3  # 3.2 inches of width per panel
