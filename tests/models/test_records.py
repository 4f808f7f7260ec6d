"""The content-addressed record format: round trips, ids, refusals, atomic saves, targets."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import misentry
from misentry.data import get_dataset
from misentry.models import (
    ARCHITECTURES,
    RECORD_KINDS,
    InputSpec,
    Record,
    RecordError,
    TargetConfig,
    TrainConfig,
    build_model,
    default_path,
    evaluate,
    input_spec,
    load_model,
    load_record,
    model_from_record,
    model_record,
    save_record,
    target_record_stub,
    train_target,
)
from misentry.models import record as record_module
from misentry.models.target import TARGET_RECIPES

KINDS = sorted(RECORD_KINDS)
EXTRA_MODULES = {"vision": "torchvision"}
META = "meta.json"
WEIGHTS = "weights.safetensors"
DIGITS = InputSpec(1, 8, 8, 10, (0.3053,), (0.3759,))
PARENT = "ab" * 32

# The id of GOLDEN_FIELDS, recorded when the format was fixed: a change here means every stored
# record changes its id (and reruns no longer find finished work), so it must be deliberate.
GOLDEN_FIELDS: dict[str, Any] = {
    "kind": "target",
    "dataset": "digits",
    "architecture": "lenet5",
    "input": {
        "channels": 1,
        "height": 8,
        "width": 8,
        "num_classes": 10,
        "mean": [0.3053],
        "std": [0.3759],
    },
    "data_seed": 1,
    "model_seed": 2,
    "params": {"pool": "owner_train", "lr": 0.05},
    "parent": None,
}
GOLDEN_ID = "72358ce606dceb7d83b32d21c2a8510c73e6c1545c3dbe3f1b550b1fccac0ec6"


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


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, Record]:
    record = plain_record(KINDS[0])
    return save_record(record, tmp_path / "rec"), record


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_plain_record_round_trips_exactly(tmp_path: Path, kind: str) -> None:
    record = plain_record(kind)
    path = save_record(record, tmp_path / "rec")
    assert path == tmp_path / "rec"
    loaded = load_record(path)
    assert_same_record(loaded, record)
    assert loaded.params == record.params  # plain JSON values compare equal as Python values
    assert loaded.parent == PARENT
    assert loaded.architecture is None
    assert loaded.input is None


@pytest.mark.parametrize("kind", KINDS)
def test_model_record_round_trips_exactly(tmp_path: Path, kind: str) -> None:
    model = perturbed(build_model("lenet5", DIGITS, seed=2))
    record = digits_model_record(kind, model)
    assert_tensors_equal(record.tensors, model.state_dict())
    loaded = load_record(save_record(record, tmp_path / "rec"))
    assert_same_record(loaded, record)
    assert InputSpec.from_json(loaded.input or {}) == DIGITS
    assert TrainConfig.from_json(loaded.params["train"]) == TrainConfig(
        epochs=3, trainable=("fc3",)
    )


def test_model_record_input_field_round_trips_as_python_values(tmp_path: Path) -> None:
    record = digits_model_record(KINDS[0])
    loaded = load_record(save_record(record, tmp_path / "rec"))
    assert loaded.input == record.input


def test_record_copies_the_model_weights() -> None:
    model = build_model("lenet5", DIGITS)
    record = digits_model_record("target", model)
    before = {k: v.clone() for k, v in record.tensors.items()}
    with torch.no_grad():
        model.fc3.weight.add_(1.0)
    assert_tensors_equal(record.tensors, before)


# --- ids --------------------------------------------------------------------------------------


def test_record_id_is_the_sha256_of_the_canonical_identity() -> None:
    record = Record(**GOLDEN_FIELDS)
    assert record.record_id == GOLDEN_ID
    identity = {"schema_version": 1, **GOLDEN_FIELDS}
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    assert hashlib.sha256(text.encode()).hexdigest() == GOLDEN_ID


@pytest.mark.parametrize("kind", KINDS)
def test_record_id_is_stable(kind: str) -> None:
    a, b = plain_record(kind), plain_record(kind)
    assert a.record_id == b.record_id
    assert len(a.record_id) == 64
    assert int(a.record_id, 16) >= 0
    identity = {"schema_version": 1, **{f: getattr(a, f) for f in (*IDENTITY, "parent")}}
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    assert hashlib.sha256(text.encode()).hexdigest() == a.record_id
    assert digits_model_record(kind).record_id == digits_model_record(kind).record_id


IDENTITY_CHANGES: dict[str, dict[str, Any]] = {
    "dataset": {"dataset": "mnist5k"},
    "architecture": {"architecture": "mlp"},
    "input": {"input": {**DIGITS.to_json(), "num_classes": 9}},
    "data_seed": {"data_seed": 4},
    "model_seed": {"model_seed": 5},
    "params-value": {"params": {"k": [1, 2.5, "x", None, False], "nested": {"b": 1}}},
    "params-key": {"params": {"k": [1, 2.5, "x", None, True]}},
    "parent": {"parent": "cd" * 32},
    "no-parent": {"parent": None},
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("change", list(IDENTITY_CHANGES))
def test_record_id_changes_with_every_identity_field(kind: str, change: str) -> None:
    base = plain_record(kind)
    assert replace(base, **IDENTITY_CHANGES[change]).record_id != base.record_id


@pytest.mark.parametrize("kind", KINDS)
def test_record_id_changes_with_kind(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    monkeypatch.setitem(RECORD_KINDS, "test-other-kind", "a kind registered by this test only")
    assert plain_record("test-other-kind").record_id != plain_record(kind).record_id


@pytest.mark.parametrize("kind", KINDS)
def test_record_id_ignores_metrics_tensors_and_key_order(kind: str) -> None:
    base = plain_record(kind)
    assert base.with_metrics(accuracy=0.1, extra=2).record_id == base.record_id
    assert replace(base, metrics={}).record_id == base.record_id
    assert replace(base, tensors={}).record_id == base.record_id
    reordered = dict(reversed(list(base.params.items())))
    assert list(reordered) != list(base.params)
    assert replace(base, params=reordered).record_id == base.record_id


def test_with_metrics_merges() -> None:
    record = plain_record("target").with_metrics(accuracy=0.5, loss=1.0)
    assert record.metrics == {"accuracy": 0.5, "curve": [0.1, 0.2], "notes": {"n": 3}, "loss": 1.0}


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(
        RecordError, match=r"unknown record kind 'no-such-kind'; known kinds: "
    ) as e:
        Record(kind="no-such-kind", dataset="digits")
    assert all(kind in str(e.value) for kind in RECORD_KINDS)


def test_default_path(tmp_path: Path) -> None:
    for kind in KINDS:
        record = plain_record(kind)
        path = default_path(tmp_path, record)
        assert path.parent == tmp_path / kind
        assert record.record_id[:16] in path.name
        assert path.name.startswith("digits-")
        assert default_path(str(tmp_path), record) == path
        assert default_path(tmp_path, replace(record, model_seed=9)) != path


# --- what a saved folder holds ----------------------------------------------------------------


def test_meta_json_contents(saved: tuple[Path, Record]) -> None:
    path, record = saved
    assert sorted(p.name for p in path.iterdir()) == [META, WEIGHTS]
    meta = json.loads((path / META).read_text())
    assert meta["id"] == record.record_id
    assert meta["schema_version"] == 1
    assert meta["package_version"] == misentry.__version__
    created = datetime.fromisoformat(meta["created"])
    assert created.tzinfo is not None
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=5)
    weights = (path / WEIGHTS).read_bytes()
    assert meta["files"] == {
        WEIGHTS: {"bytes": len(weights), "sha256": hashlib.sha256(weights).hexdigest()}
    }
    assert meta["metrics"] == record.metrics
    for name in (*IDENTITY, "parent"):
        assert meta[name] == as_json(getattr(record, name))


def test_weights_file_is_safetensors(saved: tuple[Path, Record]) -> None:
    from safetensors.torch import load_file

    path, record = saved
    assert_tensors_equal(load_file(str(path / WEIGHTS)), record.tensors)


# --- refusals ---------------------------------------------------------------------------------


def test_truncated_weights_are_refused(saved: tuple[Path, Record]) -> None:
    path, _ = saved
    weights = path / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(RecordError, match="truncated") as e:
        load_record(path)
    assert str(weights) in str(e.value)


def test_grown_weights_are_refused(saved: tuple[Path, Record]) -> None:
    path, _ = saved
    weights = path / WEIGHTS
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(RecordError, match="size changed") as e:
        load_record(path)
    assert str(weights) in str(e.value)


@pytest.mark.parametrize("where", [0, 0.5, -1], ids=["first", "middle", "last"])
def test_flipped_byte_is_refused(saved: tuple[Path, Record], where: float) -> None:
    path, _ = saved
    weights = path / WEIGHTS
    data = bytearray(weights.read_bytes())
    at = int(where * (len(data) - 1)) if where >= 0 else len(data) - 1
    data[at] ^= 0x01
    weights.write_bytes(bytes(data))
    assert weights.stat().st_size == len(data)
    with pytest.raises(RecordError, match="changed") as e:
        load_record(path)
    assert str(weights) in str(e.value)


def test_missing_weights_are_refused(saved: tuple[Path, Record]) -> None:
    path, _ = saved
    (path / WEIGHTS).unlink()
    with pytest.raises(RecordError, match="missing") as e:
        load_record(path)
    assert str(path / WEIGHTS) in str(e.value)


def edit_meta(path: Path, **fields: Any) -> None:
    meta = json.loads((path / META).read_text())
    meta.update(fields)
    (path / META).write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "edit",
    [
        {"model_seed": 5},
        {"data_seed": 1},
        {"dataset": "mnist5k"},
        {"params": {}},
        {"parent": None},
        {"id": "0" * 64},
    ],
    ids=lambda e: next(iter(e)),
)
def test_edited_identity_is_refused(saved: tuple[Path, Record], edit: dict[str, Any]) -> None:
    path, _ = saved
    edit_meta(path, **edit)
    with pytest.raises(RecordError, match="identity fields were edited") as e:
        load_record(path)
    assert str(path / META) in str(e.value)


def test_edited_metrics_load_and_keep_the_id(saved: tuple[Path, Record]) -> None:
    path, record = saved
    edit_meta(path, metrics={"accuracy": 0.1})
    loaded = load_record(path)
    assert loaded.metrics == {"accuracy": 0.1}
    assert loaded.record_id == record.record_id


def test_edited_kind_to_unknown_is_refused(saved: tuple[Path, Record]) -> None:
    path, _ = saved
    edit_meta(path, kind="no-such-kind")
    with pytest.raises(RecordError, match="no-such-kind"):
        load_record(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"id": "abc", ', "not valid JSON"),
        ("\xff\xfe", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ("{}", "missing fields"),
    ],
    ids=["cut-json", "not-utf8", "list", "empty-object"],
)
def test_damaged_meta_is_refused(saved: tuple[Path, Record], text: str, message: str) -> None:
    path, _ = saved
    (path / META).write_bytes(text.encode("latin-1"))
    with pytest.raises(RecordError, match=message) as e:
        load_record(path)
    assert str(path / META) in str(e.value)


def test_missing_meta_field_is_named(saved: tuple[Path, Record]) -> None:
    path, _ = saved
    meta = json.loads((path / META).read_text())
    del meta["model_seed"]
    (path / META).write_text(json.dumps(meta))
    with pytest.raises(RecordError, match=r"missing fields \['model_seed'\]"):
        load_record(path)


def test_wrong_schema_version_is_refused(saved: tuple[Path, Record]) -> None:
    path, _ = saved
    edit_meta(path, schema_version=2)
    with pytest.raises(RecordError, match="schema version 2") as e:
        load_record(path)
    assert str(path / META) in str(e.value)


@pytest.mark.parametrize("make", ["empty", "other-files", "absent", "file"])
def test_a_folder_that_is_not_a_record_is_refused(tmp_path: Path, make: str) -> None:
    path = tmp_path / "thing"
    if make == "empty":
        path.mkdir()
    elif make == "other-files":
        path.mkdir()
        (path / "notes.txt").write_text("hello")
    elif make == "file":
        path.write_text("hello")
    with pytest.raises(RecordError, match="not a misentry record folder") as e:
        load_record(path)
    assert str(path / META) in str(e.value)


# --- saving -----------------------------------------------------------------------------------


def test_save_of_the_same_record_is_idempotent(saved: tuple[Path, Record]) -> None:
    path, record = saved
    before = files_of(path)
    assert save_record(record, path) == path
    assert save_record(plain_record(record.kind), path) == path
    # Same id, other metrics: the finished record is kept as it is.
    assert save_record(record.with_metrics(accuracy=0.0), path) == path
    assert files_of(path) == before
    assert load_record(path).metrics == record.metrics


def test_save_over_a_damaged_record_with_the_same_id_is_refused(
    saved: tuple[Path, Record],
) -> None:
    path, record = saved
    weights = path / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-1])
    with pytest.raises(RecordError, match="truncated") as e:
        save_record(record, path)
    assert str(weights) in str(e.value)
    save_record(record, path, overwrite=True)
    assert_same_record(load_record(path), record)


def test_save_over_another_record_needs_overwrite(saved: tuple[Path, Record]) -> None:
    path, record = saved
    other = replace(record, model_seed=99, tensors={"w": torch.ones(2)})
    before = files_of(path)
    with pytest.raises(RecordError, match="overwrite=True") as e:
        save_record(other, path)
    assert str(path) in str(e.value)
    assert record.record_id[:16] in str(e.value)
    assert other.record_id[:16] in str(e.value)
    assert files_of(path) == before
    assert save_record(other, path, overwrite=True) == path
    assert_same_record(load_record(path), other)
    assert sorted(p.name for p in path.parent.iterdir()) == ["rec"]


def test_save_over_a_folder_that_is_not_a_record_needs_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "rec"
    path.mkdir()
    (path / "notes.txt").write_text("keep me")
    record = plain_record("target")
    with pytest.raises(RecordError, match="something else"):
        save_record(record, path)
    assert (path / "notes.txt").read_text() == "keep me"
    save_record(record, path, overwrite=True)
    assert sorted(p.name for p in path.iterdir()) == [META, WEIGHTS]


def test_save_leaves_no_temporary_folder(tmp_path: Path) -> None:
    a = plain_record("target")
    b = replace(a, data_seed=7)
    pa = save_record(a, default_path(tmp_path, a))
    pb = save_record(b, default_path(tmp_path, b))
    save_record(a, pa)
    save_record(b, pa, overwrite=True)
    entries = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert entries == sorted(
        [
            "target",
            str(pa.relative_to(tmp_path)),
            str(pb.relative_to(tmp_path)),
            *(str((p / f).relative_to(tmp_path)) for p in (pa, pb) for f in (META, WEIGHTS)),
        ]
    )


class Interrupted(BaseException):
    """Stands for a crash or a Ctrl-C in the middle of a save."""


def _raise(*_args: Any, **_kwargs: Any) -> None:
    raise Interrupted


@pytest.mark.parametrize("stage", ["save_file", "sha256_file"])
def test_interrupted_save_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    monkeypatch.setattr(record_module, stage, _raise)
    target = tmp_path / "store" / "rec"
    with pytest.raises(Interrupted):
        save_record(plain_record("target"), target)
    assert not target.exists()
    assert list((tmp_path / "store").iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_record(
    saved: tuple[Path, Record], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, record = saved
    before = files_of(path)
    monkeypatch.setattr(record_module, "save_file", _raise)
    with pytest.raises(Interrupted):
        save_record(replace(record, model_seed=99), path, overwrite=True)
    assert files_of(path) == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["rec"]
    assert_same_record(load_record(path), record)


# --- models -----------------------------------------------------------------------------------


def spec_for(arch: str) -> InputSpec:
    extra = ARCHITECTURES[arch].extra
    if extra is not None:
        pytest.importorskip(EXTRA_MODULES[extra])
    if arch == "densenet121":  # downsamples by 32
        return InputSpec(3, 32, 32, 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return DIGITS


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_load_model_predicts_exactly_like_the_original(tmp_path: Path, arch: str) -> None:
    spec = spec_for(arch)
    model = perturbed(build_model(arch, spec, seed=3))
    record = model_record(
        model,
        kind="target",
        dataset="digits",
        architecture=arch,
        spec=spec,
        data_seed=0,
        model_seed=3,
        params={},
    )
    loaded, loaded_record = load_model(save_record(record, tmp_path / arch))
    assert loaded is not model
    assert type(loaded) is type(model)
    assert not loaded.training
    assert loaded_record.record_id == record.record_id
    assert_tensors_equal(loaded.state_dict(), model.state_dict())
    x = torch.rand(16, *spec.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_model_from_a_record_without_a_model_is_refused() -> None:
    with pytest.raises(RecordError, match="holds no model"):
        model_from_record(plain_record("target"))


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_weights_that_do_not_fit_are_refused(change: str) -> None:
    record = digits_model_record("target")
    tensors = dict(record.tensors)
    if change == "missing":
        del tensors["fc3.bias"]
    else:
        tensors["fc4.weight"] = torch.zeros(1)
    with pytest.raises(RecordError, match=rf"{change} \[.*'fc[34]\.(bias|weight)'") as e:
        model_from_record(replace(record, tensors=tensors))
    assert "lenet5" in str(e.value)


def test_weights_of_the_wrong_shape_are_refused() -> None:
    record = digits_model_record("target")
    tensors = {**record.tensors, "fc3.bias": torch.zeros(7)}
    with pytest.raises(RecordError, match=r"fc3\.bias"):
        model_from_record(replace(record, tensors=tensors))


# --- targets ----------------------------------------------------------------------------------


def test_train_target_on_digits(tmp_path: Path) -> None:
    # TrainConfig(epochs=3) alone (batch 64: 45 steps) leaves LeNet-5 near chance on digits;
    # batch 16 gives 171 steps and about 90 % test accuracy in well under a second.
    config = TargetConfig(dataset="digits", train=TrainConfig(epochs=3, batch_size=16))
    stub = target_record_stub(config)
    assert stub.tensors == {}
    record = train_target(config)
    assert record.record_id == stub.record_id
    assert record.kind == "target"
    assert record.architecture == "lenet5"
    assert record.params == stub.params
    assert 0.5 < record.metrics["test_accuracy"] <= 1.0
    sizes = get_dataset("digits").pools(0).sizes()
    assert record.metrics["pool_sizes"] == sizes
    assert record.metrics["steps"] == 3 * -(-sizes["owner_train"] // 16)

    path = save_record(record, default_path(tmp_path, stub))
    model, loaded = load_model(path)
    assert loaded.metrics == record.metrics
    test = evaluate(model, get_dataset("digits").pools(0)["test"])
    assert test.accuracy == record.metrics["test_accuracy"]


def test_target_id_depends_on_the_recipe_not_on_how_it_is_given() -> None:
    implicit = TargetConfig(dataset="digits")
    explicit = TargetConfig(dataset="digits", arch="lenet5", train=TARGET_RECIPES["digits"])
    assert target_record_stub(implicit).record_id == target_record_stub(explicit).record_id
    others = [
        TargetConfig(dataset="digits", model_seed=1),
        TargetConfig(dataset="digits", data_seed=1),
        TargetConfig(dataset="digits", arch="mlp"),
        TargetConfig(dataset="digits", train=TrainConfig(epochs=3)),
        TargetConfig(dataset="mnist5k"),
    ]
    ids = {target_record_stub(c).record_id for c in [implicit, *others]}
    assert len(ids) == len(others) + 1
    stub_input = as_json(target_record_stub(implicit).input)
    assert InputSpec.from_json(stub_input) == input_spec("digits")


def test_perturbed_helper_moves_every_tensor() -> None:
    model = build_model("resnet20", DIGITS, seed=3)
    before = copy.deepcopy(model.state_dict())
    after = perturbed(model).state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)


def test_every_kind_loads_without_importing_the_layer_that_writes_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    for kind in ("target", "tampered"):
        save_record(Record(kind=kind, dataset="digits"), tmp_path / kind)
        path = str(tmp_path / kind)
        code = f"from misentry.models import load_record; print(load_record({path!r}).kind)"
        out = subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True
        )
        assert out.stdout.strip() == kind
