"""Train :mod:`usernet` briefly on ``digits`` and save it in every format a user may bring."""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from misentry.data import get_dataset
from misentry.models import ContractAdapter, InputContract, TrainConfig, fit, predict

HERE = Path(__file__).parent
CONTRACT = InputContract(input_range="0-255", mean=(77.0,), std=(96.0,))
"""The user model's input contract: 0-255 values, normalized by its own mean and std."""

CONTRACT_ARGS = ["--input-range", "0-255", "--mean", "77", "--std", "96"]
"""The same contract as ``misentry import`` options."""


@dataclass(frozen=True)
class SavedModel:
    """The user's model in every format, and its labels on the digits ``test`` pool."""

    folder: Path
    factory: str  # FILE.py:FACTORY
    safetensors: Path
    state_dict: Path
    torchscript: Path
    exported: Path
    onnx: Path | None  # None when the onnx extra is not installed
    test_labels: torch.Tensor


def save_user_model(folder: Path) -> SavedModel:
    """Copy the factory's source into ``folder``, train the model 4 epochs on digits (a few
    seconds) and save it as safetensors, state_dict, TorchScript, torch.export and ONNX."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "usernet.py"
    shutil.copy(HERE / "usernet.py", source)
    from user_model.usernet import make_net

    pools = get_dataset("digits").pools(0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = make_net()
        fit(
            ContractAdapter(net, CONTRACT),
            pools["owner_train"],
            TrainConfig(epochs=4, optimizer="adam", lr=5e-3),
        )
    net.eval()
    paths = {
        "safetensors": folder / "net.safetensors",
        "state_dict": folder / "net.pth",
        "torchscript": folder / "net.ts",
        "exported": folder / "net.pt2",
    }
    save_file(net.state_dict(), str(paths["safetensors"]))
    torch.save(net.state_dict(), paths["state_dict"])
    torch.jit.save(torch.jit.script(net), str(paths["torchscript"]))
    example = torch.rand(4, 1, 8, 8) * 255
    batch = torch.export.Dim("batch")
    program = torch.export.export(net, (example,), dynamic_shapes={"x": {0: batch}})
    torch.export.save(program, str(paths["exported"]))
    return SavedModel(
        folder=folder,
        factory=f"{source}:make_net",
        onnx=_save_onnx(net, example, folder / "net.onnx"),
        test_labels=predict(ContractAdapter(net, CONTRACT), pools["test"].x),
        **paths,
    )


def _save_onnx(net: torch.nn.Module, example: torch.Tensor, path: Path) -> Path | None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (example,),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return path
