"""A short, seeded fine-tuning loop for a model a compression method has changed (clustered
or pruned), so it recovers the accuracy the change cost. Hooks let a method keep its
constraint during the steps (weight sharing trains its codebooks, not the weights)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from fogline.workloads.trainer.datasets import Split


def finetune(
    model: nn.Module,
    split: Split,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    parameters: Iterable[torch.Tensor] | None = None,
    before_forward: Callable[[], None] | None = None,
    after_backward: Callable[[], None] | None = None,
) -> nn.Module:
    """Trains `model` in place on the training split with Adam for `epochs`, on the CPU
    (compressed edge models are small); returns it in eval mode."""
    model.cpu().train()
    optimizer = torch.optim.Adam(
        list(parameters) if parameters is not None else model.parameters(), lr=learning_rate
    )
    features = torch.as_tensor(split.train_features)
    labels = torch.as_tensor(split.train_labels)
    generator = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for first in range(0, len(order), batch_size):
            batch = order[first : first + batch_size]
            if before_forward is not None:
                before_forward()
            loss = loss_fn(model(features[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if after_backward is not None:
                after_backward()
            optimizer.step()
    if before_forward is not None:
        before_forward()
    return model.eval()
