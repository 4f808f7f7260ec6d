"""Which layers a recipe touches: the weights compression acts on, the linear layers, the
parameters a fine-tune trains, and what a layer receives.

Layers are found by structure, not by class alone, so the recipes also act on a model that
misentry imported (:mod:`misentry.models.imported`): a TorchScript program's submodules are
``ScriptModule`` objects that keep their class name in ``original_name``, and a ``torch.export``
program keeps each layer's parameters in a plain ``nn.Module`` holder that the program never
calls (see :func:`misentry.models.is_linear`, which :func:`is_conv` mirrors for convolutions).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from misentry.models import is_linear, last_linear
from misentry.tamper.base import NotApplicable

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
"""Convolution classes whose ``weight`` pruning and quantization act on."""

COMPRESSIBLE = (*CONVOLUTIONS, nn.Linear)
"""Layer classes whose ``weight`` pruning and quantization act on (with their imported
counterparts, see :func:`is_compressible`)."""

CONVOLUTION_NAMES = ("Conv1d", "Conv2d", "Conv3d")
"""The ``original_name`` of a convolution compiled into a TorchScript program."""


def is_conv(module: nn.Module) -> bool:
    """True for a convolution: an ``nn.Conv1d/2d/3d``, or the same layer in a program that
    misentry imported (a TorchScript ``Conv2d``...; in a ``torch.export`` program, the holder of
    a 3- to 5-D ``weight``)."""
    if isinstance(module, CONVOLUTIONS):
        return True
    if isinstance(module, torch.jit.ScriptModule):
        return getattr(module, "original_name", "") in CONVOLUTION_NAMES
    weight = module._parameters.get("weight")
    return type(module) is nn.Module and weight is not None and 3 <= weight.dim() <= 5


def is_compressible(module: nn.Module) -> bool:
    """True for a layer whose ``weight`` pruning, quantization and bit flips act on: a
    convolution (:func:`is_conv`) or a fully connected layer (:func:`misentry.models.is_linear`)."""
    return is_conv(module) or is_linear(module)


def layer_weight(module: nn.Module) -> torch.Tensor:
    """The ``weight`` parameter of a layer (a registry layer, a TorchScript one or a holder)."""
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return weight


def compressible_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The ``(name, weight)`` of every Conv/Linear layer, in module order (biases excluded)."""
    return [
        (f"{name}.weight" if name else "weight", layer_weight(module))
        for name, module in model.named_modules()
        if is_compressible(module)
    ]


def require_compressible(model: nn.Module, family: str) -> None:
    """Raise :class:`NotApplicable` when ``model`` has no Conv/Linear weight for ``family`` to
    act on (:func:`compressible_weights` finds none)."""
    if not compressible_weights(model):
        raise NotApplicable(
            f"{family} acts on Conv/Linear weights, and no layer of the model was recognised "
            "as a convolution or a fully connected layer"
        )


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's fully connected layers (:func:`misentry.models.is_linear`) in definition
    order, with their names."""
    return [(n, m) for n, m in model.named_modules() if is_linear(m)]


def output_layer(model: nn.Module, family: str) -> tuple[str, nn.Module]:
    """The model's output layer (:func:`misentry.models.last_linear`); :class:`NotApplicable`
    when it has none, since ``family`` acts on it."""
    try:
        return last_linear(model)
    except ValueError:
        raise NotApplicable(
            f"{family} acts on the output layer, and the model has no linear output layer"
        ) from None


@torch.no_grad()
def reset_linear(layer: nn.Module) -> None:
    """Draw a fully connected layer's weights afresh from the global torch generator, as
    ``nn.Linear.reset_parameters`` does (Kaiming-uniform weight, uniform bias in
    +-1/sqrt(fan_in)); an ``nn.Linear`` is reset by its own method, so the draw is the same."""
    if isinstance(layer, nn.Linear):
        layer.reset_parameters()
        return
    weight = layer_weight(layer)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    bias = getattr(layer, "bias", None)
    if isinstance(bias, torch.Tensor):
        bound = 1 / math.sqrt(weight.shape[1]) if weight.shape[1] > 0 else 0.0
        nn.init.uniform_(bias, -bound, bound)


def trainable_layers(model: nn.Module, which: str) -> tuple[str, ...] | None:
    """Parameter-name prefixes for ``which``: None for ``"all"``, the output layer for
    ``"last"``, the last two linear layers for ``"last_two"`` (see
    :attr:`misentry.tamper.families.backdoor.BackdoorParams.trainable`)."""
    if which == "all":
        return None
    if which == "last":
        return (output_layer(model, "training the last layer")[0],)
    if which == "last_two":
        return tuple(name for name, _ in linear_layers(model)[-2:])
    raise ValueError(f"trainable={which!r} applies to the trojan only; use all, last or last_two")


def hidden_layer_reason(layer: nn.Module) -> str:
    """Why a forward hook on ``layer`` does not fire, for a layer of an imported program."""
    if isinstance(layer, torch.jit.ScriptModule):
        return "a TorchScript program runs its layers inside the program, where hooks never fire"
    if type(layer) is nn.Module:
        return "a torch.export program only holds the layer's weights and never calls it"
    return "the model never called it"


def layer_input(
    model: nn.Module, layer: nn.Module, x: torch.Tensor, family: str = "this recipe"
) -> torch.Tensor:
    """What ``layer`` receives when ``model`` runs on ``x``, flattened to (N, units); with
    gradients when the caller tracks them (put the model in eval mode first).

    It is read with a forward hook; when the hook never fires (a layer inside a TorchScript or
    ``torch.export`` program), raises :class:`NotApplicable` naming ``family``.
    """
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0])

    hidden = NotApplicable(
        f"{family} needs the input of an inner layer, read with a forward hook, and "
        f"{hidden_layer_reason(layer)}"
    )
    if isinstance(layer, torch.jit.ScriptModule):  # torch refuses hooks on them
        raise hidden
    handle = layer.register_forward_pre_hook(hook)
    try:
        model(x)
    finally:
        handle.remove()
    if not captured:
        raise hidden
    return captured[0].flatten(1)
