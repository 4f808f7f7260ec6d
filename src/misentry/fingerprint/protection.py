"""One call from a live ``nn.Module`` to a saved fingerprint bundle, for a notebook user.

:func:`protect` turns the module into a program misentry can keep (TorchScript by
``torch.jit.script``, else a ``torch.export`` program with a free batch size: a live module has
no factory file to name), imports it like ``misentry import`` does (the same checks against the
data, the same ``target`` record, held in memory), generates the fingerprints and saves the
bundle that ``misentry verify --fingerprints`` reads. The bundle records the input contract, so
verifying the user's own server or ONNX file sends what the model takes.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from misentry.fingerprint.methods.misentry import Profile
from misentry.fingerprint.service import build_generator, check_out, generate_bundle
from misentry.fingerprint.tolerance import DEFAULT_TOLERANCE, Tolerance
from misentry.models import (
    ImportRequest,
    InputContract,
    Record,
    import_target,
    model_from_record,
    save_record,
)
from misentry.models.importer import dataset_for, input_channels
from misentry.models.train import evaluation

SUFFIXES = {"torchscript": ".ts", "exported": ".pt2"}


@dataclass(frozen=True)
class Program:
    """A live module as a program a record keeps: its format, its bytes, and how it was made."""

    format: str
    data: bytes
    converted_with: str


def to_program(model: nn.Module, example: torch.Tensor) -> Program:
    """``model`` (in eval mode, restored after) as TorchScript by ``torch.jit.script``, else as a
    ``torch.export`` program with a free batch dimension, exported on ``example`` (what the model
    takes: the contract-encoded input). ValueError with both reasons when neither works."""
    with evaluation(model), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript's deprecation notice
        try:
            buffer = io.BytesIO()
            torch.jit.save(torch.jit.script(model), buffer)
            return Program("torchscript", buffer.getvalue(), "torch.jit.script")
        except Exception as err:  # TorchScript raises many kinds for Python it cannot compile
            scripted = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        try:
            batch = torch.export.Dim("batch")
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
            buffer = io.BytesIO()
            torch.export.save(program, buffer)
            return Program("exported", buffer.getvalue(), "torch.export.export")
        except Exception as err:  # torch.export raises many kinds for untraceable code
            raise ValueError(
                f"protect: the model can be neither scripted (torch.jit.script: {scripted}) nor "
                f"exported (torch.export: {type(err).__name__}: {err}); save it yourself and "
                "use `misentry import`"
            ) from None


def import_live(
    model: nn.Module,
    dataset: str,
    contract: InputContract,
    *,
    root: str | Path | None = None,
    size: tuple[int, int] | None = None,
    data_seed: int = 0,
) -> tuple[nn.Module, Record, Program]:
    """The ``target`` record of the live ``model`` (checked and measured on the data as
    ``misentry import`` does), the model rebuilt from it, and the program it holds."""
    request = ImportRequest(
        format="torchscript",
        contract=contract,
        dataset=dataset,
        root=None if root is None else Path(root),
        size=size,
        data_seed=data_seed,
    )
    channels = input_channels(request)
    contract.check_channels(channels)
    shape = dataset_for(request, channels).input_shape
    example = contract.encode(torch.rand(4, *shape, generator=torch.Generator().manual_seed(0)))
    program = to_program(model, example)
    name = f"{type(model).__name__}{SUFFIXES[program.format]}"
    with tempfile.TemporaryDirectory(prefix="misentry-protect-") as tmp:
        source = Path(tmp) / name
        source.write_bytes(program.data)
        record = import_target(
            ImportRequest(
                format=program.format,
                source=source,
                contract=contract,
                dataset=dataset,
                root=request.root,
                size=size,
                data_seed=data_seed,
            )
        )
    return model_from_record(record), record, program


def protect(
    model: nn.Module,
    dataset: str,
    *,
    out: str | Path,
    contract: InputContract | None = None,
    root: str | Path | None = None,
    size: tuple[int, int] | None = None,
    method: str = "misentry",
    profile: str | None = None,
    n: int = 100,
    seed: int = 0,
    data_seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    key: bytes | None = None,
    target_out: str | Path | None = None,
    replace: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    tolerance: Tolerance | str = DEFAULT_TOLERANCE,
) -> Path:
    """Fingerprint the live classifier ``model`` and save the bundle at ``out``; return ``out``.

    Arguments:
        model: the user's ``nn.Module`` (logits out); put in eval mode for the conversion and
            left in the mode it was in. It is converted with ``torch.jit.script``, else
            ``torch.export`` (the manifest's ``protect`` entry says which).
        dataset: a registered dataset, or ``imagefolder``/``csv`` with ``root`` and ``size``.
        out: the bundle folder to write (``misentry verify --fingerprints OUT``).
        contract: what the model takes (default: pixels in [0, 1], channels first).
        root: the dataset's folder (the CSV file for ``csv``).
        size: the model's input height and width (required for the user's own data).
        method: a registered method (default ``misentry``).
        profile: MiSentry's ``strict`` (default) or ``covert``; only with ``method="misentry"``.
        n: fingerprints to make (default 100).
        seed: the generator's seed; data_seed: the seed of the pools.
        overrides: single parameters of the method (``{"steps": 30}``).
        key: signs the bundle (HMAC-SHA256).
        target_out: also save the target record there (for ``verify --model``, ``serve``).
        replace: write over an existing bundle at ``out``.
        progress: ``progress(stage, done, total)`` follows the work.
        tolerance: how differently the model may be served without a false alarm
            (:mod:`misentry.fingerprint.tolerance`).

    Raises ValueError for a model that neither converts nor fits the data (the message says
    why), KeyError for an unknown method, GenerationError when ``out`` holds something else.

    >>> # protect(net, "digits", out="runs/fp", contract=InputContract("0-255", (77.0,), (96.0,)))
    """
    name = method_name(method, profile)
    generator = build_generator(name, overrides)
    check_out(Path(out), replace)
    live, record, program = import_live(
        model, dataset, contract or InputContract(), root=root, size=size, data_seed=data_seed
    )
    if target_out is not None:
        save_record(record, target_out, overwrite=replace)
    extra = {"protect": {"format": program.format, "converted_with": program.converted_with}}
    generate_bundle(
        live, record, generator, n, out, seed=seed, root=root, key=key, progress=progress,
        replace=replace, extra=extra, tolerance=tolerance,
    )  # fmt: skip
    return Path(out)


def method_name(method: str, profile: str | None) -> str:
    """The registry's name of ``method`` with MiSentry's ``profile`` (``misentry-covert``)."""
    if profile is None:
        return method
    if method != "misentry":
        raise ValueError(f"profile {profile!r} applies to method 'misentry' only")
    try:
        return Profile(profile).method
    except ValueError:
        known = ", ".join(p.value for p in Profile)
        raise ValueError(f"profile {profile!r}: choose one of {known}") from None
