"""Structured pruning: whole hidden neurons (Linear) and channels (Conv2d) removed, the ones
whose outgoing weights have the smallest L1 norm, so the model has fewer parameters and
fewer multiply-adds, not just zeros; the next layer loses the matching inputs. The built-in
models are chains of layers (activations, pooling and flattening in between), which is
what makes the matching inputs known; a user model is refused."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from fogline.workloads.trainer.architectures import CNN, MLP
from fogline.workloads.trainer.errors import TrainerError

_PASS_THROUGH = (nn.ReLU, nn.MaxPool2d, nn.Flatten)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _chain(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, layer) for each Linear/Conv2d in forward order."""
    if not isinstance(model, MLP | CNN):
        raise TrainerError(
            "InvalidArgument",
            "structured-pruning removes neurons and channels of the built-in mlp and cnn "
            f"models only; {type(model).__name__} is a user model, so drop structured-pruning "
            "from the compression methods",
        )
    chain: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in model.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        for attribute, layer in parent.named_children():
            if isinstance(layer, nn.Linear | nn.Conv2d):
                chain.append((parent, attribute, layer))
            elif not isinstance(layer, _PASS_THROUGH):
                raise TrainerError(
                    "InvalidArgument", f"structured-pruning cannot see through {layer}"
                )
    return chain


def _keep(layer: nn.Module, amount: float) -> torch.Tensor:
    weight = layer.weight.detach()  # type: ignore[union-attr]
    units = weight.shape[0]
    kept = max(1, math.ceil(units * (1 - amount)))
    norms = weight.abs().reshape(units, -1).sum(dim=1)
    return torch.sort(torch.topk(norms, kept).indices).values


def _outputs_kept(layer: nn.Module, keep: torch.Tensor) -> nn.Module:
    weight = layer.weight.detach()[keep]  # type: ignore[index]
    bias = layer.bias.detach()[keep] if layer.bias is not None else None  # type: ignore[union-attr,index]
    return _rebuilt(layer, weight, bias)


def _inputs_kept(layer: nn.Module, keep: torch.Tensor, previous_units: int) -> nn.Module:
    weight = layer.weight.detach()  # type: ignore[union-attr]
    if isinstance(layer, nn.Linear) and weight.shape[1] != previous_units:
        # After Flatten each channel contributes a block of spatial positions.
        spatial = weight.shape[1] // previous_units
        columns = (keep[:, None] * spatial + torch.arange(spatial)[None, :]).flatten()
        weight = weight[:, columns]
    else:
        weight = weight[:, keep]
    bias = layer.bias.detach() if layer.bias is not None else None  # type: ignore[union-attr]
    return _rebuilt(layer, weight, bias)


def _rebuilt(layer: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    new: nn.Module
    if isinstance(layer, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    elif isinstance(layer, nn.Conv2d):
        new = nn.Conv2d(
            weight.shape[1],
            weight.shape[0],
            kernel_size=layer.kernel_size,  # type: ignore[arg-type]
            stride=layer.stride,  # type: ignore[arg-type]
            padding=layer.padding,  # type: ignore[arg-type]
            dilation=layer.dilation,  # type: ignore[arg-type]
            bias=bias is not None,
        )
    else:
        raise TypeError(f"cannot rebuild {layer}")
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def prune_structured(model: nn.Module, amount: float) -> nn.Module:
    """A copy of `model` with `amount` of the units of every hidden layer removed (at least
    one kept per layer); the output layer keeps all its classes."""
    pruned = copy.deepcopy(model).cpu().eval()
    chain = _chain(pruned)
    for position in range(len(chain) - 1):
        parent, attribute, _ = chain[position]
        layer = getattr(parent, attribute)
        next_parent, next_attribute, _ = chain[position + 1]
        following = getattr(next_parent, next_attribute)
        keep = _keep(layer, amount)
        units = layer.weight.shape[0]
        setattr(parent, attribute, _outputs_kept(layer, keep))
        setattr(next_parent, next_attribute, _inputs_kept(following, keep, units))
    return pruned
