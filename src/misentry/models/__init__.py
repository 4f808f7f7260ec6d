"""Architectures, imported models and their input contract, the one training loop, and the
content-addressed record format."""

from misentry.models.contract import ContractAdapter, InputContract
from misentry.models.imported import FORMATS, ONNX_IMPORT_UNSUPPORTED, ImportedModel
from misentry.models.importer import ImportRequest, import_target
from misentry.models.model_record import load_model, model_from_record, model_record
from misentry.models.record import (
    RECORD_KINDS,
    Record,
    RecordError,
    default_path,
    load_record,
    register_kind,
    save_record,
)
from misentry.models.registry import (
    ARCHITECTURES,
    ArchInfo,
    build_model,
    get_arch,
    is_linear,
    last_linear,
)
from misentry.models.spec import InputSpec, Normalize
from misentry.models.target import TargetConfig, input_spec, target_record_stub, train_target
from misentry.models.train import (
    EvalResult,
    TrainConfig,
    TrainHooks,
    TrainResult,
    TrainState,
    evaluate,
    fit,
    logits,
    predict,
)

__all__ = [
    "ARCHITECTURES",
    "FORMATS",
    "ONNX_IMPORT_UNSUPPORTED",
    "RECORD_KINDS",
    "ArchInfo",
    "ContractAdapter",
    "EvalResult",
    "ImportRequest",
    "ImportedModel",
    "InputContract",
    "InputSpec",
    "Normalize",
    "Record",
    "RecordError",
    "TargetConfig",
    "TrainConfig",
    "TrainHooks",
    "TrainResult",
    "TrainState",
    "build_model",
    "default_path",
    "evaluate",
    "fit",
    "get_arch",
    "import_target",
    "input_spec",
    "is_linear",
    "last_linear",
    "load_model",
    "load_record",
    "logits",
    "model_from_record",
    "model_record",
    "predict",
    "register_kind",
    "save_record",
    "target_record_stub",
    "train_target",
]
