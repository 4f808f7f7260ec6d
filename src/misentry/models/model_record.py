"""Model records: save a trained ``nn.Module`` as a record and rebuild it from one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from misentry.models.imported import MANIFEST_KEY, ImportedModel, rebuild
from misentry.models.record import Record, RecordError, load_record
from misentry.models.registry import build_model
from misentry.models.spec import InputSpec


def model_record(
    model: nn.Module,
    *,
    kind: str,
    dataset: str,
    architecture: str,
    spec: InputSpec,
    data_seed: int,
    model_seed: int,
    params: dict[str, Any],
    parent: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> Record:
    """A record of ``model``'s current weights (state dict, buffers included; an imported model's
    manifest and program too, so its tampered copies load like it)."""
    if isinstance(model, ImportedModel):
        tensors = model.record_tensors()
    else:
        tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Record(
        kind=kind,
        dataset=dataset,
        architecture=architecture,
        input=spec.to_json(),
        data_seed=data_seed,
        model_seed=model_seed,
        params=params,
        parent=parent,
        metrics=metrics or {},
        tensors=tensors,
    )


def model_from_record(record: Record) -> nn.Module:
    """Rebuild the architecture named in ``record`` (or the imported model it holds) and load
    its weights (strictly), eval mode."""
    if record.architecture is None or record.input is None:
        raise RecordError(f"record {record.record_id[:16]} ({record.kind}) holds no model")
    if MANIFEST_KEY in record.tensors:
        try:
            return rebuild(record.tensors)
        except ValueError as err:
            raise RecordError(f"record {record.record_id[:16]}: {err}") from None
    model = build_model(record.architecture, InputSpec.from_json(record.input), record.model_seed)
    try:
        result = model.load_state_dict(record.tensors, strict=False)
    except RuntimeError as err:  # a tensor of the wrong shape
        raise RecordError(
            f"record {record.record_id[:16]}: weights do not fit {record.architecture}: {err}"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise RecordError(
            f"record {record.record_id[:16]}: weights do not fit {record.architecture}: "
            f"missing {result.missing_keys}, unexpected {result.unexpected_keys}"
        )
    return model.eval()


def load_model(path: Path | str) -> tuple[nn.Module, Record]:
    """Load and verify the record at ``path`` and rebuild its model."""
    record = load_record(path)
    return model_from_record(record), record
