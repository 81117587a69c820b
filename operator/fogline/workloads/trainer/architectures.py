"""The models the trainer can build: the built-in `mlp` and `cnn`, and a user entrypoint
`module:function` that returns an `nn.Module`. Built-in models take the dataset's raw
feature rows and standardize them inside the graph, so the served model needs no
preprocessing; this module never trains or exports."""

from __future__ import annotations

import importlib
import inspect
import math
from typing import Any

import numpy as np
import torch
from torch import nn

from fogline.workloads.trainer.errors import TrainerError


class Standardize(nn.Module):
    """(x - mean) / std with the statistics of the training split, kept as buffers so they
    travel with the weights into checkpoints and exported graphs."""

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        safe_std = np.where(std > 1e-6, std, 1.0)
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("scale", torch.as_tensor(1.0 / safe_std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.scale


class MLP(nn.Module):
    def __init__(self, standardize: Standardize, features: int, classes: int, hidden: int) -> None:
        super().__init__()
        self.standardize = standardize
        self.layers = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.layers(self.standardize(x))
        return logits


class CNN(nn.Module):
    """Two 3x3 convolutions over a square single-channel image given as a flat row."""

    def __init__(self, standardize: Standardize, side: int, classes: int, hidden: int) -> None:
        super().__init__()
        self.standardize = standardize
        self.side = side
        pooled = side // 2
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(32 * pooled * pooled, hidden), nn.ReLU(), nn.Linear(hidden, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = self.standardize(x).reshape(-1, 1, self.side, self.side)
        logits: torch.Tensor = self.head(self.features(image))
        return logits


def build_model(
    name: str, train_features: np.ndarray, classes: int, hidden_units: int
) -> nn.Module:
    """Builds the model named by --model for rows of train_features' width.

    An entrypoint is called with the keyword arguments it accepts among `in_features`,
    `num_classes` and `hidden_units`.
    """
    features = int(train_features.shape[1])
    if ":" in name:
        return _from_entrypoint(name, features, classes, hidden_units)
    standardize = Standardize(train_features.mean(axis=0), train_features.std(axis=0))
    if name == "mlp":
        return MLP(standardize, features, classes, hidden_units)
    if name == "cnn":
        side = math.isqrt(features)
        if side * side != features or side < 2:
            raise TrainerError(
                "ArchitectureMismatch",
                f"--model cnn: needs square single-channel images as flat rows; "
                f"the dataset has {features} features per row, use --model mlp",
            )
        return CNN(standardize, side, classes, hidden_units)
    raise TrainerError("UnknownArchitecture", f"--model: unknown architecture {name!r}")


def _from_entrypoint(name: str, features: int, classes: int, hidden: int) -> nn.Module:
    module_name, _, function_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise TrainerError(
            "EntrypointNotFound", f"--model {name}: cannot import {module_name!r}: {err}"
        ) from err
    function = getattr(module, function_name, None)
    if not callable(function):
        raise TrainerError(
            "EntrypointNotFound", f"--model {name}: {module_name} has no function {function_name!r}"
        )
    offered: dict[str, Any] = {
        "in_features": features,
        "num_classes": classes,
        "hidden_units": hidden,
    }
    parameters = inspect.signature(function).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    kwargs = {k: v for k, v in offered.items() if takes_any or k in parameters}
    try:
        model = function(**kwargs)
    except Exception as err:  # user code: any failure is reported, not hidden
        raise TrainerError(
            "EntrypointFailed", f"--model {name}: the entrypoint raised {err!r}"
        ) from err
    if not isinstance(model, nn.Module):
        raise TrainerError(
            "EntrypointFailed",
            f"--model {name}: returned {type(model).__name__}, expected a torch.nn.Module",
        )
    return model
