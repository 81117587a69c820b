"""Training throughput of the trainer's loop against a plain hand-written torch loop on the
same model, data and seed, measured side by side in one run and printed as a ratio. The
trainer's figure includes its bookkeeping: per-epoch validation, checkpoint and log line.

Run: python bench/bench_trainer.py [--epochs N] [--repeats N] [--copies N]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))

from fogline.workloads.trainer.architectures import build_model
from fogline.workloads.trainer.config import TrainingConfig
from fogline.workloads.trainer.datasets import Split, load_dataset, split_dataset
from fogline.workloads.trainer.distributed import Launch, ProcessContext
from fogline.workloads.trainer.progress import EpochReport
from fogline.workloads.trainer.training import fit, make_optimizer

SEED = 0
BATCH = 64
HIDDEN = 128


def bench_split(copies: int) -> Split:
    """The digits, tiled with a little noise so an epoch is long enough to time."""
    digits = load_dataset("builtin:digits")
    rng = np.random.default_rng(SEED)
    features = np.concatenate([digits.features] * copies)
    features = features + rng.normal(0, 0.5, features.shape).astype(np.float32)
    labels = np.concatenate([digits.labels] * copies)
    tiled = type(digits)(features.astype(np.float32), labels, "bench", "builtin", "")
    return split_dataset(tiled, 0.2, SEED)


def fresh_model(split: Split) -> nn.Module:
    torch.manual_seed(SEED)
    return build_model("mlp", split.train_features, 10, HIDDEN)


def plain_loop(split: Split, epochs: int) -> float:
    """What one would write by hand: shuffle, slice, forward, backward, step."""
    model = fresh_model(split)
    optimizer = make_optimizer("adam", model, 1e-3)
    loss_fn = nn.CrossEntropyLoss()
    x = torch.as_tensor(split.train_features)
    y = torch.as_tensor(split.train_labels)
    generator = torch.Generator().manual_seed(SEED)
    started = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for first in range(0, len(order), BATCH):
            batch = order[first : first + BATCH]
            loss = loss_fn(model(x[batch]), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return len(y) * epochs / (time.perf_counter() - started)


def trainer_loop(split: Split, epochs: int) -> tuple[float, float]:
    """The trainer's fit(), with checkpoints to a scratch folder and its epoch callback.
    Returns end-to-end samples/s and the best per-epoch figure the trainer itself reports
    (its step loop alone, without the per-epoch validation and checkpoint)."""
    model = fresh_model(split)
    context = ProcessContext(Launch(), "cpu", None, mixed_precision=False)
    with tempfile.TemporaryDirectory() as scratch:
        config = TrainingConfig(
            model="mlp",
            dataset="bench",
            output=Path(scratch),
            epochs=epochs,
            batch_size=BATCH,
            hidden_units=HIDDEN,
            seed=SEED,
        )
        logger = logging.getLogger("bench")
        in_loop: list[float] = []

        def on_epoch(report: EpochReport) -> None:
            in_loop.append(report.samples_per_second)
            logger.info(report.log_line())

        started = time.perf_counter()
        fit(
            model,
            split,
            config,
            context,
            output=Path(scratch),
            on_epoch=on_epoch,
        )
        elapsed = time.perf_counter() - started
    return len(split.train_labels) * epochs / elapsed, max(in_loop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--copies", type=int, default=8, help="digits copies in the data set")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    split = bench_split(args.copies)
    print(
        f"mlp {HIDDEN} wide, {len(split.train_labels)} training rows, batch {BATCH}, "
        f"{args.epochs} epochs, {args.threads} thread(s), best of {args.repeats} (interleaved)"
    )
    plain_loop(split, 1)  # warm up allocator and kernels for both
    plain: list[float] = []
    trainer: list[float] = []
    steps: list[float] = []
    for _ in range(args.repeats):
        plain.append(plain_loop(split, args.epochs))
        end_to_end, step_loop = trainer_loop(split, args.epochs)
        trainer.append(end_to_end)
        steps.append(step_loop)
    best_plain, best_trainer, best_steps = max(plain), max(trainer), max(steps)
    print(f"plain torch loop              {best_plain:10,.0f} samples/s")
    print(f"trainer, step loop only       {best_steps:10,.0f} samples/s")
    print(f"trainer, end to end           {best_trainer:10,.0f} samples/s")
    print(f"ratio trainer/plain, steps    {best_steps / best_plain:.3f}")
    print(
        f"ratio trainer/plain, overall  {best_trainer / best_plain:.3f}  (includes validation "
        "and a checkpoint every epoch)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
