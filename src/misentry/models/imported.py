"""Models misentry did not build: read the user's model in one of its formats.

Three formats give a differentiable torch module, which every stage needs (tampering trains the
weights, fingerprint generators take gradients with respect to the input):

``module``
    The user's own ``nn.Module``, built by a factory function named ``FILE.py:FACTORY`` or
    ``package.module:FACTORY`` (keyword arguments given), with weights from a safetensors file
    (a plain ``state_dict`` file is read only with ``torch.load(weights_only=True)``).
``torchscript``
    A TorchScript archive (``torch.jit.save``), read with ``torch.jit.load``.
``exported``
    A PyTorch 2 program (``torch.export.save``, ``.pt2``), read with ``torch.export.load``.

ONNX is read for verification only (:mod:`misentry.verify.onnx`): the converters from ONNX to
torch (onnx2torch, onnx2pytorch) require torchvision, which does not install beside the pinned
torch, so :data:`ONNX_IMPORT_UNSUPPORTED` explains the way round.

A TorchScript or ``torch.export`` program travels inside the record (its bytes), so a record
loads anywhere; a factory is code, which misentry never stores: the record names the factory and
the sha256 of its source file, and loading refuses a source that changed since the import.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import io
import json
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from misentry.models.contract import ContractAdapter, InputContract
from misentry.models.record import RecordError, sha256_file

FORMATS: dict[str, str] = {
    "module": "your nn.Module from a factory function, with safetensors or state_dict weights",
    "torchscript": "a TorchScript archive (torch.jit.save)",
    "exported": "a PyTorch 2 program (torch.export.save, .pt2)",
}
"""The formats ``misentry import`` reads into a differentiable model."""

ONNX_IMPORT_UNSUPPORTED = (
    "an ONNX model cannot be imported for tampering and fingerprint generation: the converters "
    "from ONNX to torch (onnx2torch, onnx2pytorch) require torchvision, which does not install "
    "beside the pinned torch. Import the same model from PyTorch (--module, --torchscript or "
    "--exported) to generate fingerprints, then verify the ONNX file with "
    "`misentry verify --fingerprints BUNDLE --onnx FILE`"
)

MANIFEST_KEY = "import.manifest"
PROGRAM_KEY = "import.program"


class ImportedModel(ContractAdapter):
    """An imported model behind its input contract, with what it takes to rebuild it.

    ``manifest``: the format, the contract and the source (JSON values); ``program``: the bytes of
    a TorchScript or ``torch.export`` program (empty for a factory).
    """

    def __init__(
        self,
        model: nn.Module,
        contract: InputContract,
        manifest: dict[str, Any],
        program: bytes = b"",
        *,
        fixed_batch: int | None = None,
    ) -> None:
        exported = manifest["format"] == "exported"
        super().__init__(model, contract, fixed_batch=fixed_batch, fixed_mode=exported)
        self.manifest = manifest
        self.program = program

    def __deepcopy__(self, memo: dict[int, Any]) -> ImportedModel:
        # A deep copy of a TorchScript module gives parameters that are clones (not leaves), which
        # no optimizer can train; make them leaves again, with the original's flags.
        with warnings.catch_warnings():  # torch's own pytree deprecation, on copying a program
            warnings.simplefilter("ignore", FutureWarning)
            inner = copy.deepcopy(self.model, memo)
        for param, original in zip(inner.parameters(), self.model.parameters(), strict=True):
            if not param.is_leaf:
                param.detach_().requires_grad_(original.requires_grad)
        clone = ImportedModel(
            inner,
            self.contract,
            copy.deepcopy(self.manifest),
            self.program,
            fixed_batch=self.fixed_batch,
        )
        return clone.train(self.training)

    def train(self, mode: bool = True) -> ImportedModel:
        super().train(mode)
        return self

    def record_tensors(self) -> dict[str, torch.Tensor]:
        """The state dict plus the manifest and program, as a record stores them."""
        tensors = {k: v.detach().clone() for k, v in self.state_dict().items()}
        tensors[MANIFEST_KEY] = bytes_tensor(json.dumps(self.manifest, sort_keys=True).encode())
        if self.program:
            tensors[PROGRAM_KEY] = bytes_tensor(self.program)
        return tensors


def bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).clone()


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    return bytes(tensor.contiguous().numpy().tobytes())


def read_program(fmt: str, data: bytes) -> tuple[nn.Module, int | None]:
    """The module held by the bytes of a TorchScript or ``torch.export`` program, and the batch
    size it is fixed to (None when any batch size runs)."""
    buffer = io.BytesIO(data)
    if fmt == "torchscript":
        with warnings.catch_warnings():  # torch announces TorchScript's deprecation on each load
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(buffer, map_location="cpu"), None  # type: ignore[no-untyped-call]
    if fmt == "exported":
        program = torch.export.load(buffer)
        return program.module(), _static_batch(program)
    raise ValueError(f"format {fmt!r} has no program; known: {', '.join(FORMATS)}")


def _static_batch(program: torch.export.ExportedProgram) -> int | None:
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in program.graph_signature.user_inputs:
            value = node.meta.get("val")
            size = None if value is None else value.shape[0]
            return size if isinstance(size, int) else None
    return None


def resolve_factory(ref: str) -> tuple[Callable[..., nn.Module], Path]:
    """The factory function ``FILE.py:NAME`` or ``package.module:NAME`` and its source file."""
    target, sep, name = ref.rpartition(":")
    if not sep or not target or not name:
        raise ValueError(f"--module {ref!r}: expected FILE.py:FACTORY or package.module:FACTORY")
    if target.endswith(".py"):
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"--module {ref!r}: {path} not found")
        spec = importlib.util.spec_from_file_location(f"misentry_user_{path.stem}", path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        module = importlib.import_module(target)
        path = Path(str(module.__file__))
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"--module {ref!r}: {target} has no function {name!r}")
    return factory, path


def build_from_factory(manifest: Mapping[str, Any]) -> nn.Module:
    """Call the manifest's factory with its arguments, checking its source is unchanged."""
    factory, path = resolve_factory(str(manifest["factory"]))
    digest = sha256_file(path)
    if digest != manifest["source_sha256"]:
        raise RecordError(
            f"the factory's source {path} changed since the model was imported (sha256 "
            f"{digest[:16]}…, imported from {str(manifest['source_sha256'])[:16]}…); import the "
            "model again"
        )
    model = factory(**manifest.get("args", {}))
    if not isinstance(model, nn.Module):
        raise ValueError(f"{manifest['factory']} returned {type(model).__name__}, not nn.Module")
    return model


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a ``torch.save`` file with ``weights_only=True``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError and others for unsafe content
        raise ValueError(
            f"{path}: not a plain state_dict (read with torch.load(weights_only=True)): {err}"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state_dict (names to tensors)")
    return state


def load_weights_strict(model: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """Load ``state`` into ``model``, refusing missing or unexpected names or wrong shapes."""
    try:
        result = model.load_state_dict(dict(state), strict=False)
    except RuntimeError as err:
        raise ValueError(f"{what}: the weights do not fit the model: {err}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{what}: the weights do not fit the model: missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )


def rebuild(tensors: Mapping[str, torch.Tensor]) -> ImportedModel:
    """The imported model stored in a record's tensors (manifest, program, weights)."""
    manifest = json.loads(tensor_bytes(tensors[MANIFEST_KEY]))
    program = tensor_bytes(tensors[PROGRAM_KEY]) if PROGRAM_KEY in tensors else b""
    if manifest["format"] == "module":
        inner, fixed = build_from_factory(manifest), None
    else:
        inner, fixed = read_program(manifest["format"], program)
    contract = InputContract.from_json(manifest["contract"])
    model = ImportedModel(inner, contract, manifest, program, fixed_batch=fixed)
    weights = {k: v for k, v in tensors.items() if k not in (MANIFEST_KEY, PROGRAM_KEY)}
    load_weights_strict(model, weights, f"imported {manifest['format']} model")
    return model.eval()
