"""The training loop: seeded, resumable from the newest checkpoint, data-parallel under
torchrun, mixed precision on CUDA. It reports each epoch through a callback and leaves
export, evaluation of exported files and artifact writing to other rooms."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler, TensorDataset

from fogline.workloads.trainer.checkpoints import load_latest_checkpoint, save_checkpoint
from fogline.workloads.trainer.config import TrainingConfig
from fogline.workloads.trainer.datasets import Split
from fogline.workloads.trainer.distillation.teacher import SoftTargets
from fogline.workloads.trainer.distributed import ProcessContext, share_from_primary
from fogline.workloads.trainer.errors import TrainerError, diverged
from fogline.workloads.trainer.progress import EpochReport

log = logging.getLogger(__name__)

EVALUATION_BATCH = 4096


@dataclass(frozen=True)
class TrainingResult:
    model: nn.Module
    history: list[EpochReport]
    resumed_from: int

    @property
    def epochs_done(self) -> int:
        return self.history[-1].epoch if self.history else 0


def seed_everything(seed: int) -> None:
    """Same seed, same weights and batches: fixed RNGs and deterministic kernels."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def make_optimizer(name: str, model: nn.Module, learning_rate: float) -> torch.optim.Optimizer:
    parameters = model.parameters()
    if name == "adam":
        return torch.optim.Adam(parameters, lr=learning_rate)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.01)
    return torch.optim.SGD(parameters, lr=learning_rate, momentum=0.9)


@torch.no_grad()
def evaluate_module(
    model: nn.Module, features: torch.Tensor, labels: torch.Tensor
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of a torch model on a held-out split."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=features.device)
    correct = torch.zeros((), device=features.device)
    for start in range(0, len(labels), EVALUATION_BATCH):
        logits = model(features[start : start + EVALUATION_BATCH]).float()
        target = labels[start : start + EVALUATION_BATCH]
        loss_sum += nn.functional.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(dim=1) == target).sum()
    model.train(was_training)
    count = max(1, len(labels))
    return float(loss_sum) / count, float(correct) / count


def fit(
    model: nn.Module,
    split: Split,
    config: TrainingConfig,
    context: ProcessContext,
    *,
    output: Path | None,
    on_epoch: Callable[[EpochReport], None],
    teacher: SoftTargets | None = None,
) -> TrainingResult:
    """Trains `model` in place up to config.epochs and returns it unwrapped, on its device.
    With a teacher, the loss blends its soft targets with the labels."""
    device = torch.device(context.device)
    model.to(device)
    optimizer = make_optimizer(config.optimizer, model, config.learning_rate)
    scaler = torch.amp.GradScaler(device.type) if context.mixed_precision else None
    # float16 autocast only with mixed precision; a disabled autocast still costs per step
    autocast: Callable[[], contextlib.AbstractContextManager[None]] = (
        partial(torch.autocast, device.type, dtype=torch.float16)
        if context.mixed_precision
        else contextlib.nullcontext
    )
    fingerprint = config.checkpoint_fingerprint()

    state = _shared_checkpoint(context, output, fingerprint)
    history: list[EpochReport] = []
    start_epoch = 0
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        history = [EpochReport(**entry) for entry in state["history"]]
        start_epoch = int(state["epoch"])
        if context.is_primary:
            log.info("resuming from checkpoint at epoch %d", start_epoch)
            if start_epoch >= config.epochs:
                log.info("checkpoint already has %d epochs; nothing left to train", start_epoch)

    trained: nn.Module = model
    if context.is_distributed:
        device_ids = [device.index] if device.type == "cuda" else None
        trained = DistributedDataParallel(model, device_ids=device_ids)

    train_x = torch.as_tensor(split.train_features, device=device)
    train_y = torch.as_tensor(split.train_labels, device=device)
    valid_x = torch.as_tensor(split.validation_features, device=device)
    valid_y = torch.as_tensor(split.validation_labels, device=device)
    sampler: DistributedSampler[tuple[torch.Tensor, ...]] = DistributedSampler(
        TensorDataset(train_y),
        num_replicas=context.launch.world_size,
        rank=context.launch.rank,
        shuffle=True,
        seed=config.seed,
    )
    loss_fn = nn.CrossEntropyLoss()
    soft = teacher.to(device) if teacher is not None else None

    for epoch in range(start_epoch + 1, config.epochs + 1):
        started = time.perf_counter()
        trained.train()
        sampler.set_epoch(epoch)
        order = torch.tensor(list(iter(sampler)), device=device)
        batch_losses: list[torch.Tensor] = []
        batch_sizes: list[int] = []
        for first in range(0, len(order), config.batch_size):
            batch = order[first : first + config.batch_size]
            with autocast():
                logits = trained(train_x[batch])
                if soft is None:
                    loss = loss_fn(logits, train_y[batch])
                else:
                    loss = soft.loss(logits, train_y[batch], batch)
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            batch_losses.append(loss.detach())  # no .item() here: it would sync every step
            batch_sizes.append(len(batch))
        weights = torch.tensor(batch_sizes, device=device, dtype=torch.float32)
        losses = torch.stack(batch_losses).float() if batch_losses else weights
        totals = torch.stack([(losses * weights).sum(), weights.sum()])
        if context.is_distributed:
            dist.all_reduce(totals)
        loss_sum, samples = totals.tolist()
        seconds = time.perf_counter() - started
        train_loss = loss_sum / max(samples, 1.0)
        # Every rank sees the same reduced loss, so every rank stops here together. A
        # diverged epoch is never checkpointed: a resume must not start from broken weights.
        _check_finite(epoch, "the training loss", train_loss, config)
        if not context.is_primary:
            continue
        validation_loss, accuracy = evaluate_module(model, valid_x, valid_y)
        _check_finite(epoch, "the validation loss", validation_loss, config)
        report = EpochReport(
            epoch=epoch,
            epochs=config.epochs,
            train_loss=train_loss,
            validation_loss=validation_loss,
            accuracy=accuracy,
            samples_per_second=samples / seconds if seconds > 0 else 0.0,
            seconds=seconds,
        )
        history.append(report)
        if output is not None:
            save_checkpoint(
                output,
                epoch,
                _checkpoint_state(
                    epoch=epoch,
                    model=model,
                    optimizer=optimizer,
                    scaler=scaler,
                    history=history,
                    fingerprint=fingerprint,
                ),
            )
        on_epoch(report)

    model.eval()
    return TrainingResult(model=model, history=history, resumed_from=start_epoch)


def _check_finite(epoch: int, what: str, value: float, config: TrainingConfig) -> None:
    if not math.isfinite(value):
        raise diverged(epoch, what, value, config.learning_rate, config.optimizer)


def _checkpoint_state(
    *,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    history: list[EpochReport],
    fingerprint: dict[str, Any],
) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else {},
        "rng": torch.get_rng_state(),
        "history": [asdict(entry) for entry in history],
        "fingerprint": fingerprint,
    }


def _shared_checkpoint(
    context: ProcessContext, output: Path | None, fingerprint: dict[str, Any]
) -> dict[str, Any] | None:
    """Rank 0 reads the newest checkpoint and every rank gets it, so optimizer state stays
    identical across ranks; a refusal on rank 0 is raised on every rank, never left hanging."""
    if output is None:
        return None
    found: tuple[dict[str, Any] | None, tuple[str, str, int] | None] = (None, None)
    if context.is_primary:
        try:
            found = (load_latest_checkpoint(output, fingerprint), None)
        except TrainerError as err:
            found = (None, (err.reason, err.message, err.exit_code))
    shared: tuple[dict[str, Any] | None, tuple[str, str, int] | None]
    shared = share_from_primary(context, found)
    state, failure = shared
    if failure is not None:
        raise TrainerError(*failure)
    return state
