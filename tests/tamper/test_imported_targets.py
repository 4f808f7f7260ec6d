"""BIVBench on imported targets (``misentry import``): in every format the layers are found by
structure, the variants that can act on the model build and reload, the others are skipped with
their reason, and replacement architectures fit the model's input contract and cost."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from misentry.cli import main
from misentry.models import (
    ARCHITECTURES,
    ImportedModel,
    Record,
    build_model,
    last_linear,
    load_model,
    model_from_record,
    predict,
    save_record,
)
from misentry.tamper.base import NotApplicable, Variant
from misentry.tamper.builder import Workspace, build_all
from misentry.tamper.families.distillation import Distillation, DistillationParams
from misentry.tamper.families.independent import (
    DifferentArch,
    IndependentParams,
    IndependentRetrain,
)
from misentry.tamper.layers import (
    compressible_weights,
    layer_input,
    layer_weight,
    linear_layers,
    reset_linear,
)
from misentry.tamper.registry import select
from misentry.tamper.replacement import candidate_architectures, forward_macs, model_macs
from user_model.saved import CONTRACT

from .conftest import IMPORT_FORMATS, MakeContext, same

QUICK = IndependentParams(tolerance=0.3, max_epochs=5)
"""Replacement models trained only to within 30 points of the target (a few epochs)."""

PROGRAMS = {"torchscript": "a TorchScript program", "exported": "a torch.export program"}


def class_based_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Conv2d/Linear layers of an eager model, found by class (the reference)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)]


@pytest.mark.parametrize("fmt", IMPORT_FORMATS)
def test_layers_are_found_by_structure_in_every_format(
    fmt: str, imported_workspaces: dict[str, Workspace]
) -> None:
    reference = class_based_layers(imported_workspaces["module"].target)
    model = imported_workspaces[fmt].target
    found = compressible_weights(model)
    assert [name for name, _ in found] == [f"{n}.weight" for n, _ in reference]
    assert [w.shape for _, w in found] == [m.weight.shape for _, m in reference]
    params = dict(model.named_parameters())
    assert all(weight is params[name] for name, weight in found)  # the live parameters
    linear = [n for n, m in reference if isinstance(m, nn.Linear)]
    assert [n for n, _ in linear_layers(model)] == linear
    assert last_linear(model)[0] == linear[-1]


def test_macs_are_measured_on_the_model_itself(
    imported_workspaces: dict[str, Workspace], digits_target: tuple[nn.Module, Record]
) -> None:
    eager = imported_workspaces["module"].target
    shape = imported_workspaces["module"].spec.shape
    counted = 0

    def count(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal counted
        per_output = layer_weight(module)[0].numel()  # in/groups x kernel (conv), in (linear)
        counted += int(output.numel()) * int(per_output)

    handles = [m.register_forward_hook(count) for _, m in class_based_layers(eager)]
    with torch.no_grad():
        eager(torch.zeros(1, *shape))
    for handle in handles:
        handle.remove()
    assert counted > 0
    for fmt in IMPORT_FORMATS:
        assert model_macs(imported_workspaces[fmt].target, shape) == counted, fmt
    model, record = digits_target
    spec = imported_workspaces["module"].spec
    assert model_macs(model, shape) == forward_macs(str(record.architecture), spec)


@pytest.mark.parametrize("fmt", IMPORT_FORMATS)
def test_identity_last_layer_tuning_and_pruning_build_and_reload(
    fmt: str, imported_workspaces: dict[str, Workspace], tmp_path: Path
) -> None:
    workspace = imported_workspaces[fmt]
    target = workspace.target
    variants = select("pruning,ft_last_lr1e-4,identity")
    events = {e.variant: e for e in build_all(workspace, variants, [0], tmp_path)}
    x = workspace.pools["test"].x
    for slug, event in events.items():
        assert event.not_applicable is None
        assert event.record is not None
        model, loaded = load_model(event.path)
        assert isinstance(model, ImportedModel)
        assert model.manifest["format"] == fmt
        assert loaded.architecture == f"imported:{fmt}"
        assert torch.equal(predict(model, x), predict(model_from_record(event.record), x)), slug
        assert event.record.metrics["observable"] == (slug != "identity"), slug
    identity, _ = load_model(events["identity"].path)
    assert same(identity.state_dict(), target.state_dict())
    tuned, _ = load_model(events["ft_last_lr1e-4"].path)
    head = last_linear(target)[0]
    before, after = dict(target.named_parameters()), dict(tuned.named_parameters())
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved
    assert all(name.startswith(head + ".") for name in moved)
    pruned, _ = load_model(events["pruning"].path)
    zeros = sum(int((w == 0).sum()) for _, w in compressible_weights(pruned))
    total = sum(w.numel() for _, w in compressible_weights(pruned))
    pruning = events["pruning"].record
    assert pruning is not None
    recorded = pruning.metrics["objective"]["sparsity"]
    assert zeros / total == pytest.approx(recorded)
    assert recorded > 0.0


@pytest.mark.parametrize("fmt", ["torchscript", "exported"])
def test_what_a_program_hides_is_skipped_with_its_reason(
    fmt: str, imported_workspaces: dict[str, Workspace], tmp_path: Path
) -> None:
    variants = select("independent_retrain,trojan,identity")
    events = build_all(imported_workspaces[fmt], variants, [0, 1], tmp_path)
    reasons = {e.variant: e.not_applicable for e in events}
    trojan, retrain = str(reasons["trojan"]), str(reasons["independent_retrain"])
    assert "trojan needs the input of an inner layer" in trojan
    assert PROGRAMS[fmt] in trojan
    assert "cannot be re-initialised" in retrain
    assert PROGRAMS[fmt] in retrain
    assert reasons["identity"] is None
    assert [e.record is None for e in events] == [True, True, True, True, False, False]
    assert not (tmp_path / "trojan").exists()
    assert not (tmp_path / "independent_retrain").exists()


def test_an_imported_module_exposes_its_layers_and_reinitialises(
    make_imported_ctx: MakeContext,
) -> None:
    ctx = make_imported_ctx("module")
    name, layer = linear_layers(ctx.target)[0]
    x = ctx.data.check.x[:5]
    assert layer_input(ctx.target.eval(), layer, x).shape == (5, layer_weight(layer).shape[1])
    for fmt in ("torchscript", "exported"):
        other = make_imported_ctx(fmt)
        hidden = dict(other.target.named_modules())[name]
        with pytest.raises(NotApplicable, match="forward hook"):
            layer_input(other.target, hidden, x, "trojan")
    retrain = IndependentRetrain(QUICK)
    fresh = retrain.build(ctx)  # the user's own architecture, redrawn from the instance seed
    assert isinstance(fresh.model, ImportedModel)
    assert fresh.architecture == "imported:module"
    before, after = dict(ctx.target.named_parameters()), dict(fresh.model.named_parameters())
    assert before.keys() == after.keys()
    assert not any(torch.equal(before[k], after[k]) for k in before if before[k].dim() > 1)
    assert fresh.met  # it trains: within QUICK.tolerance of the target's accuracy


def test_a_program_layer_is_redrawn_as_nn_linear_draws(
    imported_workspaces: dict[str, Workspace],
) -> None:
    for fmt in ("torchscript", "exported"):
        model = copy.deepcopy(imported_workspaces[fmt].target)
        _, layer = last_linear(model)
        rows, columns = layer_weight(layer).shape
        reference = nn.Linear(columns, rows)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(7)
            reference.reset_parameters()
            torch.manual_seed(7)
            reset_linear(layer)
        assert torch.equal(layer_weight(layer), reference.weight), fmt
        assert torch.equal(getattr(layer, "bias"), reference.bias), fmt  # noqa: B009


@pytest.mark.parametrize("fmt", IMPORT_FORMATS)
def test_replacements_are_registry_architectures_that_fit_the_contract(
    fmt: str, make_imported_ctx: MakeContext
) -> None:
    ctx = make_imported_ctx(fmt)
    assert ctx.spec.mean == pytest.approx((CONTRACT.mean[0] / 255,))  # type: ignore[index]
    assert ctx.spec.std == pytest.approx((CONTRACT.std[0] / 255,))  # type: ignore[index]
    own = model_macs(ctx.target, ctx.spec.shape)
    assert own is not None
    ratio = 12.0
    found = candidate_architectures(ctx, ratio)
    assert found
    for arch in found:
        macs = forward_macs(arch, ctx.spec)
        assert macs is not None, arch
        assert macs <= ratio * own, arch
        logits = build_model(arch, ctx.spec, 0).eval()(torch.rand(2, *ctx.spec.shape))
        assert logits.shape == (2, ctx.spec.num_classes), arch
    distillation = Distillation(DistillationParams())
    students = {
        distillation.student_architecture(make_imported_ctx(fmt, index=i)) for i in range(8)
    }
    allowed = set(candidate_architectures(ctx, DistillationParams().max_cost_ratio))
    if fmt == "module":
        allowed.add("imported:module")  # the user's own architecture, re-initialised
    assert students <= allowed
    assert students & set(ARCHITECTURES)


def test_a_replacement_on_a_program_builds_and_reloads(
    imported_workspaces: dict[str, Workspace], tmp_path: Path
) -> None:
    workspace = imported_workspaces["exported"]
    variant = Variant("different_arch", "quick", DifferentArch(replace(QUICK, max_cost_ratio=12)))
    (event,) = build_all(workspace, [variant], [0], tmp_path)
    assert event.record is not None
    assert event.record.architecture in ARCHITECTURES
    assert event.record.metrics["choices"]["architecture"] == event.record.architecture
    model, loaded = load_model(event.path)
    assert loaded.input == workspace.record.input  # the contract's normalization
    x = workspace.pools["test"].x
    assert torch.equal(predict(model, x), predict(model_from_record(event.record), x))


def test_the_cli_prints_the_skip_reason(
    imported_targets: dict[str, Record], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = save_record(imported_targets["torchscript"], tmp_path / "target")
    args = ["tamper", "build", "--target", str(target), "--out", str(tmp_path / "bench")]
    assert main([*args, "--variant", "trojan,identity", "--instances", "1", "--json"]) == 0
    rows = {row["variant"]: row for row in json.loads(capsys.readouterr().out)}
    assert "TorchScript program" in rows["trojan"]["not_applicable"]
    assert rows["trojan"]["built"] == 0
    assert rows["identity"]["built"] == 1
    assert rows["identity"]["not_applicable"] is None
    assert main([*args, "--variant", "trojan", "--instances", "1"]) == 0
    assert "trojan: skipped: trojan needs the input of an inner layer" in capsys.readouterr().out
