"""``misentry.protect``: one call from the user's live module to a saved bundle that verifies
the model, records its input contract, and says how the module was converted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from misentry.fingerprint import protect
from misentry.fingerprint.bundle import load_bundle
from misentry.fingerprint.protection import to_program
from misentry.models import ContractAdapter, load_model, predict
from user_model.saved import CONTRACT, SavedModel
from user_model.usernet import make_net

QUICK = {"steps": 2, "refine_rounds": 2, "zoo": ("ft_last:1e-4x1",), "pool_factor": 2}


def test_protect_saves_a_bundle_of_the_live_modules_labels(
    user_model: SavedModel, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    net = make_net()
    net.load_state_dict(load_file(str(user_model.safetensors)))
    net.train()
    out = protect(
        net, "digits", contract=CONTRACT, out=tmp_path / "fp", n=8, overrides=QUICK,
        target_out=tmp_path / "target",
    )  # fmt: skip
    assert net.training  # the caller's mode is kept
    bundle = load_bundle(out)
    assert len(bundle) == 8
    assert bundle.contract == CONTRACT
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["protect"] == {"format": "torchscript", "converted_with": "torch.jit.script"}
    assert torch.equal(bundle.labels, predict(ContractAdapter(net, CONTRACT), bundle.x))
    model, record = load_model(tmp_path / "target")
    assert record.architecture == "imported:torchscript"
    assert torch.equal(predict(model, bundle.x), bundle.labels)


class Unscriptable(nn.Module):
    """A module TorchScript cannot compile (a Python lambda in forward) but torch.export can."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flatten = lambda t: t.reshape(t.shape[0], -1)  # noqa: E731
        return self.head(flatten(x))


def test_a_module_torchscript_refuses_is_exported_with_a_free_batch() -> None:
    program = to_program(Unscriptable(), torch.rand(4, 1, 8, 8))
    assert (program.format, program.converted_with) == ("exported", "torch.export.export")
    loaded = torch.export.load(__import__("io").BytesIO(program.data)).module()
    assert loaded(torch.rand(7, 1, 8, 8)).shape == (7, 10)


def test_a_profile_goes_with_misentry_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="profile"):
        protect(make_net(), "digits", out=tmp_path / "fp", method="ssf", profile="covert")
