"""Tiny models, data and state comparisons shared by the training-loop tests (test_train*.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from misentry.models import ARCHITECTURES, InputSpec, build_model, input_spec

EXTRA_MODULES = {"vision": "torchvision"}

SYNTH = InputSpec(3, 32, 32, 5, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))

TINY = InputSpec(1, 2, 2, 3, (0.5,), (0.5,))

State = dict[str, torch.Tensor]


def digits_model(arch: str = "lenet5", seed: int = 0) -> nn.Module:
    return build_model(arch, input_spec("digits"), seed)


def synthetic(n: int, spec: InputSpec = SYNTH, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, *spec.shape, generator=gen), torch.randint(
        0, spec.num_classes, (n,), generator=gen
    )


def tiny_model(in_features: int = 4, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, classes))


def snapshot(model: nn.Module) -> State:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: State, b: State, only: list[str] | None = None) -> None:
    assert list(a) == list(b)
    for name in only if only is not None else a:
        assert a[name].dtype == b[name].dtype
        assert torch.equal(a[name], b[name]), f"{name} differs"


def changed(a: State, b: State) -> set[str]:
    return {name for name in a if not torch.equal(a[name], b[name])}


def modes(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def build_or_skip(arch: str, spec: InputSpec) -> nn.Module:
    extra = ARCHITECTURES[arch].extra
    if extra is not None:
        pytest.importorskip(EXTRA_MODULES[extra])
    return build_model(arch, spec, seed=0)
