"""Shared plumbing of the training commands: arguments, data, seeded batches, checkpoints, logs.

Determinism and resumption: the batch of step ``s`` is drawn from a generator seeded with
``(seed, s)``, so a run resumed from a checkpoint at step ``s`` sees exactly the batches that an
uninterrupted run would have seen.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from miniworld.corpus import ensure_images
from miniworld.paths import CAPTIONS_PATH, TRAIN_DIR
from miniworld.world import HUE_FREE_PALETTES

log = logging.getLogger("miniworld.training")


def parser(description: str, out: Path, steps: int, batch_size: int, lr: float) -> argparse.ArgumentParser:
    """The arguments every training command takes, with per-model defaults."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--device", default="cpu", help="cuda or cpu")
    p.add_argument("--out", type=Path, default=out, help="where the trained model is saved")
    p.add_argument("--steps", type=int, default=steps)
    p.add_argument("--batch-size", type=int, default=batch_size)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="checkpoints + logs (default: _train/<name>)")
    p.add_argument("--ckpt-every", type=int, default=1000)
    p.add_argument("--workers", type=int, default=1, help="processes for rendering the corpus")
    p.add_argument("--corpus-limit", type=int, default=None, help="use only the first N corpus rows (smoke tests)")
    return p


@dataclass
class Run:
    """A training run's state on disk: checkpoint, loss log and timing."""

    workdir: Path
    seed: int
    resumed_at: int = 0  # the step a checkpoint restored (0: a fresh run)
    seconds_before: float = 0.0  # training seconds logged up to the restored step, so the curve's clock runs on
    setup_before: float = 0.0  # setup seconds of the sessions before the restored checkpoint
    sessions_before: int = 0  # sessions before this one that the restored checkpoint saw
    created: float = field(default_factory=time.time)  # process start of this session: setup = loop start - created
    loop_started: float | None = None  # set by begin_loop()

    def finished(self, steps: int) -> bool:
        """True if an earlier session trained all ``steps`` and wrote its summary. Running it again would only
        re-save the outputs and count a session that trained nothing."""
        path = self.workdir / "summary.json"
        if not path.exists() or json.loads(path.read_text())["steps"] != steps:
            return False
        log.info("%s already trained %d steps (summary.json): skipped; delete %s to train it again",
                 self.workdir.name, steps, self.workdir)
        return True

    def batch_indices(self, step: int, n: int, batch_size: int, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The (deterministic) sample indices of ``step``: uniform over ``n`` rows, or drawn with replacement
        in proportion to ``weights`` (float[n]) when given."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        if weights is None:
            return torch.randint(0, n, (batch_size,), generator=g)
        return torch.multinomial(weights, batch_size, replacement=True, generator=g)

    def step_generator(self, step: int, device: str) -> torch.Generator:
        """A generator for the noise of ``step`` (deterministic, resumable)."""
        return torch.Generator(device=device).manual_seed(self.seed * 7_919 + step + 1)

    def load(self, modules: dict[str, torch.nn.Module | torch.optim.Optimizer]) -> int:
        """Restore the latest checkpoint into ``modules``; return the step to resume from."""
        path = self.workdir / "checkpoint.pt"
        if not path.exists():  # a fresh start: drop the rows of a session that ended before its first checkpoint
            self._truncate_loss_log()
            return 0
        state = torch.load(path, map_location="cpu", weights_only=True)
        for name, module in modules.items():
            module.load_state_dict(state[name])
        log.info("resumed from %s at step %d", path, state["step"])
        self.resumed_at = int(state["step"])
        # checkpoints written before these were recorded: one earlier session, its setup time unknown
        self.setup_before = float(state.get("setup_seconds", 0.0))
        self.sessions_before = int(state.get("sessions", 1))
        self._truncate_loss_log()
        return self.resumed_at

    def _truncate_loss_log(self) -> None:
        """Drop the loss rows logged after the restored checkpoint, or all of them on a fresh start (an interrupted
        session logs past its last checkpoint; this run logs those steps again) and pick up the clock where the kept
        rows end."""
        path = self.workdir / "loss.csv"
        if not path.exists():
            return
        header, *rows = path.read_text().splitlines()
        kept = [r for r in rows if int(r.split(",")[0]) <= self.resumed_at]
        path.write_text("\n".join([header, *kept]) + "\n")
        self.seconds_before = float(kept[-1].split(",")[1]) if kept else 0.0

    def begin_loop(self) -> float:
        """Mark the end of setup (loading, rendering, caches) and the start of the training loop; returns the time."""
        self.loop_started = time.time()
        return self.loop_started

    def setup_seconds(self) -> float:
        """Setup time of every session up to now, this one included."""
        return self.setup_before + ((self.loop_started or time.time()) - self.created)

    def save(self, step: int, modules: dict[str, torch.nn.Module | torch.optim.Optimizer]) -> None:
        """Write the checkpoint atomically, with the session count and setup time that a resumed run adds to."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        state = {name: m.state_dict() for name, m in modules.items()} | {
            "step": step, "sessions": self.sessions_before + 1, "setup_seconds": self.setup_seconds()}
        tmp = self.workdir / "checkpoint.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.workdir / "checkpoint.pt")

    def log_loss(self, step: int, values: dict[str, float], seconds: float) -> None:
        """Append one line of the loss curve (``loss.csv``: step, seconds, values...)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.workdir / "loss.csv"
        if not path.exists():
            path.write_text("step,seconds," + ",".join(values) + "\n")
        with path.open("a") as f:
            figures = ",".join(f"{v:.6g}" for v in values.values())
            f.write(f"{step},{self.seconds_before + seconds:.1f},{figures}\n")


def start(args: argparse.Namespace, name: str) -> Run:
    """Set up logging, seeds and determinism flags; return the run."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.backends.cudnn.benchmark = False
    workdir = args.workdir or TRAIN_DIR / name
    return Run(workdir=workdir, seed=args.seed)


def corpus_images(args: argparse.Namespace) -> tuple[np.ndarray, list[dict]]:
    """The training corpus rows and their rendered images (cached under _train/)."""
    import pyarrow.parquet as pq

    table = pq.read_table(CAPTIONS_PATH)
    name = "corpus_images.npy"
    if args.corpus_limit is not None:
        table, name = table.slice(0, args.corpus_limit), f"corpus_images_{args.corpus_limit}.npy"
    images = ensure_images(table, TRAIN_DIR / name, args.workers)
    return images, table.to_pylist()


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8[B, H, W, 3] -> float[B, 3, H, W] in [-1, 1]."""
    return images_u8.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def finish(run: Run, out: Path, steps: int, extra: dict | None = None) -> None:
    """Record the training summary next to the saved model: steps, wall time of the training loop, and setup
    time before it (loading, rendering and encoding caches), so the card reports the whole cost. A resumed run
    adds its times to those of the sessions before its checkpoint, whether they stopped at a deadline or were
    killed: the loop clock of the loss log and the checkpoint's setup time and session count."""
    wall = run.seconds_before + time.time() - (run.loop_started or run.created)
    summary = {"steps": steps, "wall_seconds": round(wall, 1), "setup_seconds": round(run.setup_seconds(), 1),
               "sessions": run.sessions_before + 1} | (extra or {})
    out.mkdir(parents=True, exist_ok=True)
    (run.workdir / "summary.json").write_text(json.dumps(summary, indent=1))
    log.info("done: %s", summary)


def corpus_labels(rows: list[dict], heads: tuple[str, ...],
                  hue_free: frozenset[str] = HUE_FREE_PALETTES) -> dict[str, torch.Tensor]:
    """Per-row classifier targets (world.HEADS indices); rows with two subjects get -100 (see render.labels)."""
    from miniworld.corpus import spec_of
    from miniworld.render import labels

    out: dict[str, list[int]] = {h: [] for h in heads}
    for row in rows:
        spec = spec_of(row)
        lab = labels(spec, hue_free)
        for h in heads:
            out[h].append(lab[h] if len(spec.subjects) == 1 else -100)
    return {h: torch.tensor(v) for h, v in out.items()}


ROW_GROUPS = ("identity", "object", "styled", "pair")


def row_group(row: dict) -> str:
    """A corpus row's group for the sampling mix: one identity, one plain object, one styled object, or two
    subjects."""
    subjects = json.loads(row["subjects"])
    if len(subjects) > 1:
        return "pair"
    if subjects[0][0] == "identity":
        return "identity"
    return "styled" if row["style"] is not None else "object"


def parse_mix(text: str) -> dict[str, float]:
    """``"identity=0.5,object=0.3,..."`` -> {group: share}; every group of ROW_GROUPS named, shares > 0."""
    mix: dict[str, float] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in ROW_GROUPS:
            raise ValueError(f"--mix: unknown group {name!r}; use {', '.join(ROW_GROUPS)}")
        try:
            mix[name] = float(value)
        except ValueError:
            raise ValueError(f"--mix: {part!r} is not group=number") from None
        if mix[name] <= 0:
            raise ValueError(f"--mix: the share of {name!r} must be > 0")
    missing = set(ROW_GROUPS) - set(mix)
    if missing:
        raise ValueError(f"--mix: give a share for every group; missing {', '.join(sorted(missing))}")
    return mix


def mix_weights(rows: list[dict], mix: dict[str, float]) -> torch.Tensor:
    """Per-row sampling weights (float[N], summing to 1) giving each group its share of every batch."""
    groups = [row_group(r) for r in rows]
    counts = {g: groups.count(g) for g in ROW_GROUPS}
    total = sum(mix.values())
    return torch.tensor([mix[g] / total / counts[g] for g in groups], dtype=torch.float64)


def warmup_cosine(opt: torch.optim.Optimizer, steps: int, warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup`` x ``steps`` steps, then cosine decay to 5 % of the peak."""
    n_warm = max(1, int(warmup * steps))

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        t = min(1.0, (step - n_warm) / max(1, steps - n_warm))
        return float(0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * t)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
