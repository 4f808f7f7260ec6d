"""ONNX export of a model, and a label oracle that runs an exported file with ONNX Runtime.

:func:`export_onnx` writes a model that takes float32 images in [0, 1] (N, C, H, W) as input
``input`` and returns logits as output ``logits``, with a dynamic batch axis: the same contract as
an in-process model, so :class:`OnnxOracle` feeds it pixels / 255 and takes the argmax. An
imported model is written as the user's module, taking what its input contract says, and
:class:`OnnxOracle` given that contract sends it the encoded pixels.

The export uses PyTorch's TorchScript-based exporter (``dynamo=False``): the default
``torch.export`` exporter of PyTorch 2.9 and later needs the ``onnxscript`` package, which the
``onnx`` extra does not install. It needs the ``onnx`` package; ONNX Runtime is needed only to
run the file. Opset 17 is the default: every ONNX Runtime since 1.13 runs it, and the
TorchScript exporter supports opsets up to 20.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from misentry.models import ContractAdapter, InputContract
from misentry.models.oracle import LabelOracle, OracleError
from misentry.models.train import evaluation
from misentry.verify.wire import describe_contract, encode_images, model_contract, wire_model

INSTALL_HINT = "pip install 'misentry[onnx]'"
DEFAULT_OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


def export_onnx(
    model: nn.Module,
    example_shape: tuple[int, int, int],
    path: Path | str,
    *,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export ``model`` (float images in [0, 1] → logits) to an ONNX file at ``path``.

    An imported model is exported as the user's own module, whose input is what its input
    contract says (:func:`~misentry.verify.wire.wire_model`): the file then matches what the
    user serves, and :class:`OnnxOracle` with the bundle's contract verifies it.

    Arguments:
        model: e.g. from :func:`misentry.models.model_from_record`; exported in eval mode, and
            its train/eval mode is restored afterwards.
        example_shape: one image's shape (C, H, W), e.g. ``InputSpec.shape``.
        path: the file to write (replaced atomically if it exists).
        opset: the ONNX opset (default 17; the exporter used supports up to 20).

    Returns the path written. Raises ImportError if the ``onnx`` package is missing.
    """
    if len(example_shape) != 3 or any(int(d) < 1 for d in example_shape):
        raise ValueError(
            f"export_onnx: example_shape is one image's (C, H, W), not {example_shape}"
        )
    if importlib.util.find_spec("onnx") is None:
        raise ImportError(f"exporting to ONNX needs the onnx package: {INSTALL_HINT}")
    path = Path(path)
    model, contract = wire_model(model)
    if isinstance(model, ContractAdapter) and model.fixed_batch is not None:
        raise ValueError(
            f"export_onnx: the model runs on batches of exactly {model.fixed_batch} (a "
            "torch.export program without a dynamic batch dimension); export ONNX from your "
            "own module instead"
        )
    example = encode_images(torch.zeros(2, *example_shape, dtype=torch.uint8), contract)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")  # umask applies
    try:
        with evaluation(model), torch.no_grad(), warnings.catch_warnings():
            # the TorchScript exporter announces its deprecation on every call
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (example,),
                tmp,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                dynamo=False,
            )
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _onnxruntime() -> Any:
    try:
        return importlib.import_module("onnxruntime")
    except ImportError as err:
        raise ImportError(f"OnnxOracle needs ONNX Runtime ({err}): {INSTALL_HINT}") from None


class OnnxOracle(LabelOracle):
    """Top-1 labels from an ONNX file run by ONNX Runtime on the CPU.

    The file's first input gets float32 images / 255 (N, C, H, W), or, with an input
    ``contract`` that is not the identity, what the model takes (the pixels encoded by the
    contract, :func:`~misentry.verify.wire.encode_images`, as the user's own ONNX file expects
    them); the label is the argmax of its first output, which must be (N, classes), as
    :func:`export_onnx` writes it.

    Arguments:
        path: the ``.onnx`` file.
        contract: the model's input contract (a bundle's :attr:`FingerprintSet.contract`;
            None: pixels in [0, 1], NCHW).
        threads: ONNX Runtime's intra-op threads (None: its default, all cores).
        num_classes, batch_size, budget, deadline: as in :class:`LabelOracle`.

    Raises ImportError with the install command if ``onnxruntime`` is missing.

    >>> oracle = OnnxOracle("target.onnx", num_classes=10)  # doctest: +SKIP
    >>> oracle.labels(images)  # doctest: +SKIP
    """

    def __init__(
        self,
        path: Path | str,
        *,
        threads: int | None = None,
        contract: InputContract | None = None,
        num_classes: int | None = None,
        batch_size: int = 64,
        budget: int | None = None,
        deadline: float | None = None,
    ) -> None:
        super().__init__(
            num_classes=num_classes, batch_size=batch_size, budget=budget, deadline=deadline
        )
        ort = _onnxruntime()
        self.path = Path(path)
        self.contract = contract if contract is not None else InputContract()
        if not self.path.is_file():
            raise FileNotFoundError(f"OnnxOracle: no ONNX file at {self.path}")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime's errors derive from Exception only
            raise ValueError(f"OnnxOracle: ONNX Runtime cannot load {self.path}: {err}") from None
        model_input = self.session.get_inputs()[0]
        self.input_name: str = model_input.name
        self.input_shape: list[int | str | None] = list(model_input.shape)

    def _query(self, images: torch.Tensor) -> torch.Tensor:
        x = encode_images(images, self.contract).numpy()
        self._check_shape(x.shape)
        try:
            scores = self.session.run(None, {self.input_name: x})[0]
        except Exception as err:  # onnxruntime's errors derive from Exception only
            raise OracleError("server", f"ONNX Runtime failed on {self.path.name}: {err}") from None
        scores = np.asarray(scores)
        if scores.ndim != 2 or scores.shape[0] != images.shape[0]:
            raise OracleError(
                "malformed",
                f"{self.path.name}: the first output has shape {list(scores.shape)}, not "
                f"[{images.shape[0]}, classes]",
            )
        return torch.from_numpy(scores.argmax(axis=1).astype(np.int64))

    def _check_shape(self, shape: tuple[int, ...]) -> None:
        expected = self.input_shape
        given = list(shape)
        fits = len(expected) == len(given) and all(
            not isinstance(e, int) or e == g for e, g in zip(expected[1:], given[1:], strict=True)
        )
        if not fits:
            raise OracleError(
                "malformed",
                f"{self.path.name} takes input {expected}; the images are {given}"
                + self._contract_hint(),
            )

    def _contract_hint(self) -> str:
        if self.contract.is_identity:
            return " (pixels in [0, 1], NCHW: the bundle records no input contract)"
        return f" (encoded by the bundle's input contract: {describe_contract(self.contract)})"

    def describe(self) -> str:
        return f"onnx {self.path}"


@dataclass(frozen=True)
class ExportCheck:
    """How far an exported file's labels agree with the model's on the same images."""

    n: int
    agree: int

    @property
    def agreement(self) -> float:
        return self.agree / self.n if self.n else 1.0


def check_export(model: nn.Module, path: Path | str, images: torch.Tensor) -> ExportCheck:
    """Compare ONNX Runtime's labels of uint8 ``images`` with ``model``'s (in-process)."""
    from misentry.models.oracle import ModuleOracle

    ours = ModuleOracle(model).labels(images)
    theirs = OnnxOracle(path, contract=model_contract(model)).labels(images)
    return ExportCheck(n=int(images.shape[0]), agree=int((ours == theirs).sum()))
