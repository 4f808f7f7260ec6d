"""``misentry import``: a target record from a model the user already has.

:func:`import_target` reads the model (:mod:`misentry.models.imported`), puts its input contract in
front of it, checks it against the data (one input of the declared shape must give ``[N, classes]``
logits, as many classes as the data has), measures its accuracy on the ``test`` pool and returns
a ``target`` record that :func:`misentry.models.load_model` loads like a trained one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from misentry.data import DatasetInfo, get_dataset
from misentry.models.contract import InputContract
from misentry.models.imported import (
    FORMATS,
    ONNX_IMPORT_UNSUPPORTED,
    ImportedModel,
    build_from_factory,
    load_weights_strict,
    read_program,
    read_weights,
    resolve_factory,
)
from misentry.models.record import Record, sha256_file
from misentry.models.spec import InputSpec
from misentry.models.train import evaluate

USER_DATASETS = ("imagefolder", "csv")
"""Dataset kinds read from the user's files, whose input size the model's contract gives."""


@dataclass(frozen=True)
class ImportRequest:
    """What to import and how.

    Attributes:
        format: one of :data:`~misentry.models.imported.FORMATS` (``"onnx"`` is refused with the
            reason).
        source: the program file (TorchScript, ``.pt2``); None for a factory.
        factory: ``FILE.py:FACTORY`` or ``package.module:FACTORY`` (format ``module``).
        args: the factory's keyword arguments.
        weights: the factory model's weights (safetensors, or a ``state_dict`` file).
        contract: what the model expects as input.
        dataset: a registered dataset, ``imagefolder`` or ``csv`` (with ``size``).
        root: the dataset's folder (the CSV file for ``csv``).
        size: the model's input height and width; required for the user's own data.
        data_seed: seed of the pools.
    """

    format: str
    contract: InputContract
    dataset: str
    source: Path | None = None
    factory: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    weights: Path | None = None
    root: Path | None = None
    size: tuple[int, int] | None = None
    data_seed: int = 0


def load_imported(request: ImportRequest) -> ImportedModel:
    """The user's model behind its contract, with the manifest a record keeps."""
    manifest: dict[str, Any] = {"format": request.format, "contract": request.contract.to_json()}
    if request.format == "onnx":
        raise ValueError(ONNX_IMPORT_UNSUPPORTED)
    if request.format not in FORMATS:
        raise ValueError(f"unknown format {request.format!r}; known: {', '.join(FORMATS)}")
    if request.format == "module":
        if not request.factory or request.weights is None:
            raise ValueError(
                "--module needs FILE.py:FACTORY (or package.module:FACTORY) and --weights"
            )
        _, source = resolve_factory(request.factory)
        factory = request.factory
        if factory.rpartition(":")[0].endswith(".py"):  # the absolute path, to rebuild anywhere
            factory = f"{source}:{factory.rpartition(':')[2]}"
        manifest.update(
            factory=factory,
            args=request.args,
            source=source.name,
            source_sha256=sha256_file(source),
            weights=request.weights.name,
            weights_sha256=sha256_file(request.weights),
        )
        inner = build_from_factory(manifest)
        load_weights_strict(inner, read_weights(request.weights), str(request.weights))
        return ImportedModel(inner, request.contract, manifest).eval()
    if request.source is None or not request.source.is_file():
        raise FileNotFoundError(f"--{request.format}: model file {request.source} not found")
    program = request.source.read_bytes()
    manifest.update(source=request.source.name, source_sha256=sha256_file(request.source))
    try:
        inner, fixed = read_program(request.format, program)
    except Exception as err:  # torch raises many kinds for a file of another format
        raise ValueError(f"{request.source}: not a {FORMATS[request.format]}: {err}") from None
    return ImportedModel(inner, request.contract, manifest, program, fixed_batch=fixed).eval()


def dataset_for(request: ImportRequest, channels: int) -> DatasetInfo:
    """The dataset the model is checked and measured on, at the contract's input size."""
    if request.dataset in USER_DATASETS:
        if request.size is None:
            raise ValueError(
                f"--dataset {request.dataset} needs the model's input size: --size H W"
            )
        h, w = request.size
        return get_dataset(f"{request.dataset}:{channels}x{h}x{w}")
    info = get_dataset(request.dataset)
    if request.size is not None and tuple(request.size) != info.input_shape[1:]:
        raise ValueError(
            f"--size {request.size[0]} {request.size[1]}: dataset {info.name!r} has images of "
            f"{info.input_shape[1]}x{info.input_shape[2]}; drop --size or choose another dataset"
        )
    return info


def input_channels(request: ImportRequest) -> int:
    """Channels of the model's input: the dataset's, else the length of ``--mean``/``--std``
    when it is 3 or 1, else 3 (RGB) for the user's own images."""
    if request.dataset not in USER_DATASETS:
        return get_dataset(request.dataset).input_shape[0]
    given = request.contract.mean or request.contract.std
    return len(given) if given is not None and len(given) in (1, 3) else 3


def check_model(model: nn.Module, shape: tuple[int, int, int], num_classes: int) -> None:
    """Refuse a model that fails on one input of ``shape``, does not give ``[N, classes]``
    logits, or has another number of classes than the data."""
    x = torch.linspace(0.0, 1.0, 2 * shape[0] * shape[1] * shape[2]).view(2, *shape)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except Exception as err:  # whatever the user's model raises
        raise ValueError(
            f"the model fails on one input of the declared shape {list(shape)} (channels, height, "
            f"width; check --size, --channels-last and the dataset): {type(err).__name__}: {err}"
        ) from None
    if not isinstance(out, torch.Tensor):
        raise ValueError(
            f"the model returns {type(out).__name__}, not a [N, classes] logits tensor"
        )
    if out.dim() != 2 or out.shape[0] != 2:
        raise ValueError(f"the model's output has shape {list(out.shape)}, not [N, classes] logits")
    if out.shape[1] != num_classes:
        raise ValueError(
            f"the model has {out.shape[1]} outputs but the data has {num_classes} classes"
        )
    if bool((out >= 0).all()) and torch.allclose(out.sum(1), torch.ones(2), atol=1e-4):
        raise ValueError(
            "the model outputs probabilities (a softmax), not logits; drop the softmax"
        )


def import_target(request: ImportRequest) -> Record:
    """Import the model, check it against the data and return its ``target`` record, with its
    accuracy on the ``test`` pool measured."""
    model = load_imported(request)
    channels = input_channels(request)
    request.contract.check_channels(channels)
    info = dataset_for(request, channels)
    pools = info.pools(request.data_seed, request.root)
    test = pools["test"]
    classes = getattr(test, "classes", None)
    num_classes = len(classes) if classes else info.num_classes
    check_model(model, info.input_shape, num_classes)
    mean, std = request.contract.unit_normalization(channels)
    spec = InputSpec(*info.input_shape, num_classes, mean, std)
    result = evaluate(model, test)
    return Record(
        kind="target",
        dataset=info.name,
        architecture=f"imported:{request.format}",
        input=spec.to_json(),
        data_seed=request.data_seed,
        params={"import": model.manifest, "classes": list(classes) if classes else None},
        metrics={
            "test_accuracy": result.accuracy,
            "test_loss": result.loss,
            "val_accuracy": evaluate(model, pools["val"]).accuracy,
            "pool_sizes": pools.sizes(),
        },
        tensors=model.record_tensors(),
    )
