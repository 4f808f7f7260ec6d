"""ONNX export, OnnxOracle and the ``misentry export`` verb (onnx and onnxruntime installed)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from misentry import cli
from misentry.models import (
    ARCHITECTURES,
    InputSpec,
    build_model,
    input_spec,
    logits,
    model_record,
    save_record,
)
from misentry.models.oracle import ModuleOracle, OracleError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from misentry.verify.onnx import OnnxOracle, check_export, export_onnx  # noqa: E402

RGB8 = InputSpec(3, 8, 8, 10, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
RGB32 = InputSpec(3, 32, 32, 10, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3))
EXTRA_MODULES = {"vision": "torchvision"}


def arch_and_spec(arch: str) -> tuple[nn.Module, InputSpec]:
    extra = ARCHITECTURES[arch].extra
    if extra is not None:
        pytest.importorskip(EXTRA_MODULES[extra])
    spec = RGB32 if arch == "densenet121" else RGB8  # DenseNet downsamples by 32
    return build_model(arch, spec, seed=1), spec


def pixels(spec: InputSpec, n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *spec.shape), dtype=torch.uint8, generator=gen)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_onnx_runtime_answers_as_the_model(tmp_path: Path, arch: str) -> None:
    model, spec = arch_and_spec(arch)
    images = pixels(spec, 24)
    path = export_onnx(model, spec.shape, tmp_path / f"{arch}.onnx")
    oracle = OnnxOracle(path, num_classes=10, batch_size=7, threads=1)  # batches 7, 7, 7, 3
    ours = ModuleOracle(model).labels(images)
    theirs = oracle.labels(images)
    scores = logits(model, images.float() / 255)
    top2 = scores.topk(2, dim=1).values
    clear = top2[:, 0] - top2[:, 1] > 1e-5  # a near tie may break either way
    assert clear.sum() >= 20
    assert torch.equal(theirs[clear], ours[clear])
    onnx_scores = oracle.session.run(None, {"input": (images.float() / 255).numpy()})[0]
    assert torch.allclose(torch.from_numpy(onnx_scores), scores, atol=1e-4)
    assert oracle.requests == 4


def test_the_file_has_named_tensors_and_a_free_batch_axis(tmp_path: Path) -> None:
    model = build_model("lenet5", input_spec("digits"), seed=0)
    path = export_onnx(model, (1, 8, 8), tmp_path / "m.onnx", opset=18)
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["input"]
    assert [o.name for o in graph.output] == ["logits"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch"
    assert [d.dim_value for d in dims[1:]] == [1, 8, 8]
    assert onnx.load(str(path)).opset_import[0].version == 18
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary left


def test_export_restores_the_training_mode(tmp_path: Path) -> None:
    model = build_model("gtsrb_cnn", RGB8, seed=0).train()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    export_onnx(model, RGB8.shape, tmp_path / "m.onnx")
    assert all(m.training for m in model.modules())
    for name, t in model.state_dict().items():
        assert torch.equal(t, before[name]), name  # BatchNorm statistics untouched


def test_a_bad_example_shape_is_a_value_error(tmp_path: Path) -> None:
    model = build_model("lenet5", input_spec("digits"), seed=0)
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        export_onnx(model, (2, 1, 8, 8), tmp_path / "m.onnx")  # type: ignore[arg-type]


def test_missing_packages_say_how_to_install_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = build_model("lenet5", input_spec("digits"), seed=0)
    path = export_onnx(model, (1, 8, 8), tmp_path / "m.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'misentry\[onnx\]'"):
        OnnxOracle(path)
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"pip install 'misentry\[onnx\]'"):
        export_onnx(model, (1, 8, 8), tmp_path / "n.onnx")


def test_a_wrong_image_shape_or_file_is_reported(tmp_path: Path) -> None:
    model = build_model("lenet5", input_spec("digits"), seed=0)
    path = export_onnx(model, (1, 8, 8), tmp_path / "m.onnx")
    with pytest.raises(OracleError, match=r"takes input \['batch', 1, 8, 8\]") as info:
        OnnxOracle(path).labels(pixels(RGB8, 2))
    assert info.value.reason == "malformed"
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        OnnxOracle(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot load"):
        OnnxOracle(tmp_path / "junk.onnx")


def test_check_export_counts_agreement(tmp_path: Path) -> None:
    model = build_model("vgg_small", RGB8, seed=2)
    path = export_onnx(model, RGB8.shape, tmp_path / "m.onnx")
    other = build_model("vgg_small", RGB8, seed=3)
    images = pixels(RGB8, 32)
    assert check_export(model, path, images).agreement == 1.0
    assert check_export(other, path, images).agreement < 1.0


# --- misentry export ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_record_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained LeNet-5 for digits, saved as a target record (export does not care)."""
    spec = input_spec("digits")
    model = build_model("lenet5", spec, seed=4)
    record = model_record(
        model,
        kind="target",
        dataset="digits",
        architecture="lenet5",
        spec=spec,
        data_seed=0,
        model_seed=4,
        params={},
    )
    return save_record(record, tmp_path_factory.mktemp("record") / "target")


def run_export(*argv: str) -> int:
    """``misentry export ARGV``; its exit status."""
    return cli.main(["export", *argv])


def test_export_writes_the_file_and_checks_it(
    tmp_path: Path, digits_record_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "target.onnx"
    assert run_export("--model", str(digits_record_dir), "--onnx", str(out), "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert out.is_file()
    assert summary["bytes"] == out.stat().st_size
    assert (summary["checked"], summary["agreement"]) == (256, 1.0)
    assert summary["opset"] == 17
    assert run_export("--model", str(digits_record_dir), "--onnx", str(out)) == 1
    assert "--force" in capsys.readouterr().err
    assert run_export("--model", str(digits_record_dir), "--onnx", str(out), "--force") == 0
    text = capsys.readouterr().out
    assert str(out) in text
    assert "agrees with the model on 256/256" in text


def test_export_fails_and_removes_a_file_that_disagrees(
    tmp_path: Path,
    digits_record_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def off_by_one(self: OnnxOracle, images: torch.Tensor) -> torch.Tensor:
        return (ModuleOracle(model).labels(images) + (torch.arange(len(images)) < 5)) % 10

    from misentry.models import load_model

    model, _ = load_model(digits_record_dir)
    monkeypatch.setattr(OnnxOracle, "_query", off_by_one)
    out = tmp_path / "target.onnx"
    # five wrong labels in each batch of 64: 20 of 256
    assert run_export("--model", str(digits_record_dir), "--onnx", str(out)) == 1
    assert re.search(r"only 236 of 256 test images \(92\.19%\)", capsys.readouterr().err)
    assert not out.exists()


def test_export_of_a_folder_that_is_no_record_is_a_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_export("--model", str(tmp_path), "--onnx", str(tmp_path / "m.onnx")) == 1
    assert "--model" in capsys.readouterr().err
