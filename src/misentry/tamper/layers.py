"""Which layers a recipe touches: the weights compression acts on, the linear layers, the
parameters a fine-tune trains, and what a layer receives."""

from __future__ import annotations

import torch
from torch import nn

from misentry.models import last_linear

COMPRESSIBLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
"""Layer types whose ``weight`` pruning and quantization act on."""


def compressible_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The ``(name, weight)`` of every Conv/Linear layer, in module order (biases excluded)."""
    return [
        (f"{name}.weight" if name else "weight", module.weight)
        for name, module in model.named_modules()
        if isinstance(module, COMPRESSIBLE)
    ]


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The model's ``nn.Linear`` layers in definition order, with their names."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def trainable_layers(model: nn.Module, which: str) -> tuple[str, ...] | None:
    """Parameter-name prefixes for ``which``: None for ``"all"``, the output layer for
    ``"last"``, the last two ``nn.Linear`` layers for ``"last_two"`` (see
    :attr:`misentry.tamper.families.backdoor.BackdoorParams.trainable`)."""
    if which == "all":
        return None
    if which == "last":
        return (last_linear(model)[0],)
    if which == "last_two":
        return tuple(name for name, _ in linear_layers(model)[-2:])
    raise ValueError(f"trainable={which!r} applies to the trojan only; use all, last or last_two")


def layer_input(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What ``layer`` receives when ``model`` runs on ``x``, flattened to (N, units); with
    gradients when the caller tracks them (put the model in eval mode first)."""
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0])

    handle = layer.register_forward_pre_hook(hook)
    try:
        model(x)
    finally:
        handle.remove()
    return captured[0].flatten(1)
