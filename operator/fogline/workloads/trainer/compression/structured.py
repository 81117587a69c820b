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
Layer = nn.Linear | nn.Conv2d


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _chain(model: nn.Module) -> list[tuple[nn.Module, str, Layer]]:
    """(parent, attribute, layer) for each Linear/Conv2d in forward order."""
    if not isinstance(model, MLP | CNN):
        raise TrainerError(
            "InvalidArgument",
            "structured-pruning removes neurons and channels of the built-in mlp and cnn "
            f"models only; {type(model).__name__} is a user model, so drop structured-pruning "
            "from the compression methods",
        )
    chain: list[tuple[nn.Module, str, Layer]] = []
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


def _keep(layer: Layer, amount: float) -> torch.Tensor:
    weight = layer.weight.detach()
    units = weight.shape[0]
    kept = max(1, math.ceil(units * (1 - amount)))
    norms = weight.abs().reshape(units, -1).sum(dim=1)
    return torch.sort(torch.topk(norms, kept).indices).values


def _outputs_kept(layer: Layer, keep: torch.Tensor) -> Layer:
    weight = layer.weight.detach()[keep]
    bias = layer.bias.detach()[keep] if layer.bias is not None else None
    return _rebuilt(layer, weight, bias)


def _inputs_kept(layer: Layer, keep: torch.Tensor, previous_units: int) -> Layer:
    weight = layer.weight.detach()
    if isinstance(layer, nn.Linear) and weight.shape[1] != previous_units:
        # After Flatten each channel contributes a block of spatial positions.
        spatial = weight.shape[1] // previous_units
        columns = (keep[:, None] * spatial + torch.arange(spatial)[None, :]).flatten()
        weight = weight[:, columns]
    else:
        weight = weight[:, keep]
    bias = layer.bias.detach() if layer.bias is not None else None
    return _rebuilt(layer, weight, bias)


def _rebuilt(layer: Layer, weight: torch.Tensor, bias: torch.Tensor | None) -> Layer:
    """The same layer (kernel, stride, padding...) with the given weight and bias."""
    new = copy.deepcopy(layer)
    new.weight = nn.Parameter(weight.clone())
    new.bias = nn.Parameter(bias.clone()) if bias is not None else None
    if isinstance(new, nn.Linear):
        new.out_features, new.in_features = weight.shape[0], weight.shape[1]
    else:
        new.out_channels, new.in_channels = weight.shape[0], weight.shape[1]
    return new


def prune_structured(model: nn.Module, amount: float) -> nn.Module:
    """A copy of `model` with `amount` of the units of every hidden layer removed (at least
    one kept per layer); the output layer keeps all its classes."""
    pruned = copy.deepcopy(model).cpu().eval()
    chain = _chain(pruned)
    for position in range(len(chain) - 1):
        parent, attribute, _ = chain[position]
        layer: Layer = getattr(parent, attribute)
        next_parent, next_attribute, _ = chain[position + 1]
        following: Layer = getattr(next_parent, next_attribute)
        keep = _keep(layer, amount)
        units = layer.weight.shape[0]
        setattr(parent, attribute, _outputs_kept(layer, keep))
        setattr(next_parent, next_attribute, _inputs_kept(following, keep, units))
    return pruned
