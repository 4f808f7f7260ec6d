"""The architecture registry: every model misentry can build, by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from misentry.models.archs.densenet import DenseNet121
from misentry.models.archs.gtsrb_cnn import GtsrbCNN
from misentry.models.archs.lenet import LeNet5
from misentry.models.archs.resnet import resnet20
from misentry.models.archs.small import MLP, MobileNetSmall, SmallVGG
from misentry.models.spec import InputSpec


@dataclass(frozen=True)
class ArchInfo:
    """An architecture: its name, what it is, how to build it, and the extra it needs if any."""

    name: str
    description: str
    builder: Callable[[InputSpec], nn.Module]
    extra: str | None = None


ARCHITECTURES: dict[str, ArchInfo] = {
    info.name: info
    for info in (
        ArchInfo("lenet5", "LeNet-5, the MNIST target (44k parameters on 28x28)", LeNet5),
        ArchInfo("gtsrb_cnn", "6 conv + 1 FC with BatchNorm, the GTSRB target", GtsrbCNN),
        ArchInfo("resnet20", "ResNet-20 with projection shortcuts, the CIFAR-10 target", resnet20),
        ArchInfo("vgg_small", "VGG-style: three blocks of two 3x3 convs, 32/64/128", SmallVGG),
        ArchInfo("mlp", "fully connected, hidden layers 256 and 128", MLP),
        ArchInfo("mobilenet_small", "MobileNet-style depthwise-separable blocks", MobileNetSmall),
        ArchInfo(
            "densenet121",
            "torchvision DenseNet-121, the ImageNet target",
            DenseNet121,
            extra="vision",
        ),
    )
}


def get_arch(name: str) -> ArchInfo:
    """Look an architecture up by name, with an error that lists the known names."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise KeyError(f"unknown architecture {name!r}; known architectures: {known}") from None


def build_model(arch: str, spec: InputSpec, seed: int = 0) -> nn.Module:
    """Build ``arch`` for ``spec`` with weights initialised from ``seed`` (global RNG untouched)."""
    info = get_arch(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = info.builder(spec)
    return model.eval()


def is_linear(module: nn.Module) -> bool:
    """True for a fully connected layer: an ``nn.Linear``, or the same layer in a program that
    misentry imported (a TorchScript ``Linear``; in a ``torch.export`` program, the holder of a
    2-D ``weight``)."""
    if isinstance(module, nn.Linear):
        return True
    if isinstance(module, torch.jit.ScriptModule):
        return getattr(module, "original_name", "") == "Linear"
    weight = module._parameters.get("weight")
    return type(module) is nn.Module and weight is not None and weight.dim() == 2


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The name and module of the model's output layer (its last linear layer, see
    :func:`is_linear`)."""
    found: tuple[str, nn.Module] | None = None
    for name, module in model.named_modules():
        if is_linear(module):
            found = (name, module)
    if found is None:
        raise ValueError(
            f"{type(model).__name__} has no linear output layer (nn.Linear); recipes and methods "
            "that act on the last layer do not apply to it"
        )
    return found[0], found[1]  # type: ignore[return-value]
