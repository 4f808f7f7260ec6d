"""Records and assertions shared by the record tests (test_record*.py, test_model_record.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from misentry.models import RECORD_KINDS, InputSpec, Record, TrainConfig, build_model, model_record

KINDS = sorted(RECORD_KINDS)

META = "meta.json"

WEIGHTS = "weights.safetensors"

DIGITS = InputSpec(1, 8, 8, 10, (0.3053,), (0.3759,))

PARENT = "ab" * 32


def mixed_tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "f32": torch.randn(3, 4, generator=gen),
        "f64": torch.randn(5, generator=gen, dtype=torch.float64),
        "f16": torch.randn(2, 2, generator=gen).half(),
        "bf16": torch.randn(3, generator=gen).bfloat16(),
        "i64": torch.tensor([-(2**40), 0, 7]),
        "i32": torch.tensor([1, -2], dtype=torch.int32),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.arange(256, dtype=torch.uint8).view(1, 16, 16),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "transposed": torch.arange(6.0).view(2, 3).t(),  # not contiguous
        "special": torch.tensor([float("inf"), -float("inf"), -0.0, 1e-45]),
    }


def plain_record(kind: str, **changes: Any) -> Record:
    fields: dict[str, Any] = {
        "kind": kind,
        "dataset": "digits",
        "architecture": None,
        "input": None,
        "data_seed": 3,
        "model_seed": 4,
        "params": {"k": [1, 2.5, "x", None, True], "nested": {"b": 1, "a": {"z": False}}},
        "parent": PARENT,
        "metrics": {"accuracy": 0.875, "curve": [0.1, 0.2], "notes": {"n": 3}},
        "tensors": mixed_tensors(),
    }
    fields.update(changes)
    return Record(**fields)


def perturbed(model: nn.Module, seed: int = 1) -> nn.Module:
    """``model`` with every tensor of its state dict moved away from its seeded initial value."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if t.is_floating_point():
                noise = torch.randn(t.shape, generator=gen) * 0.1
                t.copy_(t.abs() + 0.5 + noise.abs() if name.endswith("running_var") else t + noise)
            else:
                t.fill_(17)
    return model


def digits_model_record(kind: str, model: nn.Module | None = None, **changes: Any) -> Record:
    model = model if model is not None else perturbed(build_model("lenet5", DIGITS, seed=2))
    fields: dict[str, Any] = {
        "kind": kind,
        "dataset": "digits",
        "architecture": "lenet5",
        "spec": DIGITS,
        "data_seed": 1,
        "model_seed": 2,
        "params": {"train": TrainConfig(epochs=3, trainable=("fc3",)).to_json()},
        "parent": None,
        "metrics": {"test_accuracy": 0.5},
    }
    fields.update(changes)
    return model_record(model, **fields)


def assert_tensors_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert torch.equal(a[name], b[name]), name


def as_json(value: Any) -> Any:
    return json.loads(json.dumps(value))


IDENTITY = ("kind", "dataset", "architecture", "input", "data_seed", "model_seed", "params")


def assert_same_record(loaded: Record, original: Record) -> None:
    for name in (*IDENTITY, "parent"):
        assert as_json(getattr(loaded, name)) == as_json(getattr(original, name)), name
    assert loaded.metrics == original.metrics
    assert loaded.record_id == original.record_id
    assert_tensors_equal(loaded.tensors, original.tensors)


def files_of(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}
