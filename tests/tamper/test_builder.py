"""The builder, the observability probe and the namespace separation."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from misentry.data import Pools
from misentry.models import load_model, load_record, model_from_record, predict
from misentry.tamper.base import TamperContext, Tampered, Tampering, Variant
from misentry.tamper.builder import (
    BuildConfig,
    TargetMismatch,
    Workspace,
    build_all,
    build_instance,
    instance_path,
)
from misentry.tamper.families.identity import VARIANTS as CONTROL
from misentry.tamper.namespace import (
    DataAccess,
    Namespace,
    NamespaceViolation,
    Role,
    instance_seed,
)
from misentry.tamper.observe import Probe, ProbeConfig

IDENTITY = CONTROL[0]


# --- namespaces -------------------------------------------------------------------------------


def test_seeds_of_the_namespaces_never_meet() -> None:
    seeds = {
        ns: {
            instance_seed(ns, v, i, a)
            for v in ("ft_all_lr1e-4", "backdoor")
            for i in range(50)
            for a in range(3)
        }
        for ns in Namespace
    }
    assert [len(s) for s in seeds.values()] == [300] * len(Namespace)
    assert len(set().union(*seeds.values())) == 300 * len(Namespace)


def test_validation_instances_read_what_benchmark_instances_read(digits_pools: Pools) -> None:
    bench = DataAccess(digits_pools, Namespace.BENCH)
    tune = DataAccess(digits_pools, Namespace.TUNE)
    assert torch.equal(tune.tamper.images, bench.tamper.images)
    assert torch.equal(tune.check.images, bench.check.images)
    with pytest.raises(NamespaceViolation, match="source"):
        tune.pool("source")


def test_the_zoo_namespace_cannot_read_attacker_or_test_data(digits_pools: Pools) -> None:
    zoo = DataAccess(digits_pools, Namespace.ZOO)
    for pool in ("attacker", "test"):
        with pytest.raises(NamespaceViolation, match=pool):
            zoo.pool(pool)
    for role in Role:
        assert zoo.policy.roles[role]
        for name in zoo.policy.roles[role]:
            assert name not in ("attacker", "test")


def test_bench_recipes_train_on_attacker_data_and_the_zoo_never_sees_it(
    digits_pools: Pools,
) -> None:
    bench = DataAccess(digits_pools, Namespace.BENCH)
    zoo = DataAccess(digits_pools, Namespace.ZOO)
    assert torch.equal(bench.tamper.images, digits_pools["attacker"].images)
    zoo_indices = {
        int(i)
        for role in Role
        for name in zoo.policy.roles[role]
        for i in digits_pools.indices[name]
    }
    assert not zoo_indices & set(digits_pools.indices["attacker"].tolist())
    assert not zoo_indices & set(digits_pools.indices["test"].tolist())


# --- the probe --------------------------------------------------------------------------------


def test_probe_has_20000_inputs_and_is_the_same_every_time(workspace: Workspace) -> None:
    probe = workspace.observer.probe
    assert len(probe) >= 20_000
    first = torch.cat(list(probe.batches()))
    again = torch.cat(list(Probe(probe.images, probe.config).batches()))
    assert first.shape[0] == len(probe)
    assert torch.equal(first, again)
    assert float(first.min()) >= 0.0
    assert float(first.max()) <= 1.0
    # the clean images are in it, and so are copies that differ from them
    clean = probe.images.x
    assert torch.equal(first[-clean.shape[0] :], clean)
    assert not torch.equal(first[: clean.shape[0]], clean)


def test_probe_size_follows_its_config(workspace: Workspace) -> None:
    images = workspace.observer.probe.images
    assert len(Probe(images, ProbeConfig(shifts=(1,), noise=()))) == 5 * len(images)


def test_an_exact_copy_is_not_observable_and_a_nudged_one_is(workspace: Workspace) -> None:
    copy_ = IDENTITY.tampering.build(_ctx(workspace, 0))
    seen = workspace.observer.observe(copy_.model, full=True)
    assert seen.flips == 0
    assert seen.checked == seen.probe_size
    nudged = copy_.model
    with torch.no_grad():
        nudged.fc3.bias[3] += 0.5  # type: ignore[union-attr, index, operator]
    seen = workspace.observer.observe(nudged)
    assert seen.observable
    assert seen.checked <= seen.probe_size


# --- the builder ------------------------------------------------------------------------------


def _ctx(workspace: Workspace, seed: int) -> TamperContext:
    return workspace.context(Namespace.BENCH, seed)


@dataclass(frozen=True)
class NudgeParams:
    works_from_attempt: int = 0
    extensions_needed: int = 0


class Nudge(Tampering):
    """A test family: shifts one output bias, but only on some attempts or after extensions."""

    family = "nudge"
    malicious = False
    max_extensions: ClassVar[int] = 3
    seeds_seen: ClassVar[list[int]] = []

    def build(self, ctx: TamperContext) -> Tampered:
        Nudge.seeds_seen.append(ctx.seed)
        attempt = len(Nudge.seeds_seen) - 1
        works = attempt >= self.params.works_from_attempt and self.params.extensions_needed == 0
        return self._make(ctx, 0, works)

    def extend(self, ctx: TamperContext, tampered: Tampered) -> Tampered | None:
        if self.params.extensions_needed == 0:
            return None
        n = tampered.extensions + 1
        return self._make(ctx, n, n >= self.params.extensions_needed)

    def _make(self, ctx: TamperContext, extensions: int, works: bool) -> Tampered:
        model = ctx.copy_target()
        if works:
            with torch.no_grad():
                model.fc3.bias[1] += 1.0  # type: ignore[union-attr, index, operator]
        return Tampered(model, {"works": float(works)}, met=True, extensions=extensions)


def test_an_unobservable_result_is_extended_in_its_own_unit(workspace: Workspace) -> None:
    Nudge.seeds_seen.clear()
    variant = Variant("nudge", "test", Nudge(NudgeParams(extensions_needed=2)))
    record = build_instance(workspace, variant, 0, BuildConfig())
    assert record.metrics["observable"]
    assert record.metrics["extensions"] == 2
    assert record.metrics["attempt"] == 0


def test_a_never_observable_instance_is_replaced_by_the_next_seed(workspace: Workspace) -> None:
    Nudge.seeds_seen.clear()
    variant = Variant("nudge", "test", Nudge(NudgeParams(works_from_attempt=2)))
    record = build_instance(workspace, variant, 7, BuildConfig())
    assert record.metrics["observable"]
    assert record.metrics["attempt"] == 2
    assert [a["attempt"] for a in record.metrics["unobservable_attempts"]] == [0, 1]
    expected = [instance_seed(Namespace.BENCH, "nudge", 7, a) for a in range(3)]
    assert Nudge.seeds_seen == expected
    assert record.metrics["seed_used"] == expected[2]


def test_an_instance_that_never_becomes_observable_is_reported(workspace: Workspace) -> None:
    Nudge.seeds_seen.clear()
    variant = Variant("nudge", "test", Nudge(NudgeParams(works_from_attempt=99)))
    record = build_instance(workspace, variant, 0, BuildConfig(max_attempts=2))
    assert not record.metrics["observable"]
    assert len(record.metrics["unobservable_attempts"]) == 2


def test_identity_is_built_unobservable_with_its_metrics(workspace: Workspace) -> None:
    record = build_instance(workspace, IDENTITY, 0, BuildConfig())
    m = record.metrics
    assert record.kind == "tampered"
    assert record.parent == workspace.record.record_id
    assert m["observable"] is False
    assert m["probe_checked"] == m["probe_size"] >= 20_000
    assert m["changed_fraction"] == 0.0
    assert m["clean_accuracy"] == m["target_accuracy"]
    assert m["eval_pool"] == "test"
    for key in ("variant", "choices", "objective", "steps", "epochs", "build_seconds"):
        assert key in m


def test_build_all_writes_records_and_resumes(workspace: Workspace, tmp_path: Path) -> None:
    Nudge.seeds_seen.clear()
    nudge = Variant("nudge", "test", Nudge(NudgeParams()))
    events = build_all(workspace, [IDENTITY, nudge], range(2), tmp_path)
    assert [(e.variant, e.index, e.skipped) for e in events] == [
        ("identity", 0, False),
        ("identity", 1, False),
        ("nudge", 0, False),
        ("nudge", 1, False),
    ]
    model, record = load_model(instance_path(tmp_path, "nudge", 1))
    x = workspace.pools["test"].x
    assert record.metrics["observable"]
    built = events[3].record
    assert built is not None
    assert torch.equal(predict(model, x), predict(model_from_record(built), x))
    stamp = (instance_path(tmp_path, "nudge", 1) / "weights.safetensors").stat().st_mtime_ns
    again = build_all(workspace, [IDENTITY, nudge], range(2), tmp_path)
    assert all(e.skipped for e in again)
    assert (instance_path(tmp_path, "nudge", 1) / "weights.safetensors").stat().st_mtime_ns == stamp

    # a damaged instance is rebuilt, the others are kept
    (instance_path(tmp_path, "identity", 0) / "weights.safetensors").write_bytes(b"oops")
    third = build_all(workspace, [IDENTITY], range(2), tmp_path)
    assert [e.skipped for e in third] == [False, True]
    load_record(instance_path(tmp_path, "identity", 0))


def test_a_record_that_is_not_a_target_is_refused(workspace: Workspace) -> None:
    with pytest.raises(TargetMismatch, match="not a target"):
        Workspace.load(replace(workspace.record, kind="tampered"))


def test_a_target_of_another_shape_is_refused_before_any_work(workspace: Workspace) -> None:
    other = dict(workspace.record.input or {})
    other.update(height=28, width=28)
    with pytest.raises(TargetMismatch, match="digits"):
        Workspace.load(replace(workspace.record, input=other))
