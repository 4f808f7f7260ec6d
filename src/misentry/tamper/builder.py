"""Building BIVBench instances: (target, variant, instance, namespace) -> a tampered-model record.

For each instance the builder derives the seed from the namespace, runs the family's recipe, and
checks observability on the probe. A result that changes no probe label is pushed on by the
family's natural unit (:meth:`~misentry.tamper.base.Tampering.extend`) up to its cap; one that
never becomes observable is reported and replaced by the next seed (the next *attempt*), up to
``max_attempts``. Records are content-addressed, so a rerun skips finished instances.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from misentry.data import DatasetInfo, Pools, get_dataset
from misentry.models import (
    Record,
    RecordError,
    input_spec,
    load_record,
    model_from_record,
    model_record,
    save_record,
)
from misentry.models.spec import InputSpec
from misentry.tamper.base import IMPORTED, NotApplicable, TamperContext, Tampered, Variant
from misentry.tamper.measure import accuracy, changed_fraction
from misentry.tamper.namespace import DataAccess, Namespace, Role, concat, instance_seed
from misentry.tamper.observe import Observation, Observer, Probe, ProbeConfig


@dataclass(frozen=True)
class BuildConfig:
    """How instances are built.

    Attributes:
        namespace: ``bench`` for instances the benchmark evaluates, ``zoo`` for a generator's
            own models; it decides the seeds and the pools recipes may read.
        max_attempts: seeds tried before an instance that never becomes observable is given up.
        probe: the observability probe.
    """

    namespace: Namespace = Namespace.BENCH
    max_attempts: int = 5
    probe: ProbeConfig = field(default_factory=ProbeConfig)


class TargetMismatch(ValueError):
    """The target record does not fit the dataset or the request."""


@dataclass
class Workspace:
    """A target workspace: a target record with its model, its pools, its input spec and its
    observability probe, and the recipe contexts built on them (:meth:`context`).

    Every instance built from the target shares it. It is not the benchmark
    (:mod:`misentry.bench` evaluates fingerprints on the instances built from it).
    """

    target: nn.Module
    record: Record
    pools: Pools
    spec: InputSpec
    observer: Observer

    @classmethod
    def load(
        cls, target: Record, root: Path | str | None = None, probe: ProbeConfig | None = None
    ) -> Workspace:
        """Check ``target`` against its dataset before any work, then load pools and probe."""
        if target.kind != "target":
            raise TargetMismatch(
                f"record {target.record_id[:16]} is a {target.kind!r} record, not a target"
            )
        info = get_dataset(target.dataset)
        spec = target_spec(target, info)
        pools = info.pools(target.data_seed, root)
        model = model_from_record(target)
        all_images = concat([pools[name] for name in pools])
        if all_images.shape != spec.shape:
            raise TargetMismatch(
                f"dataset images have shape {all_images.shape}, the target takes {spec.shape}"
            )
        return cls(model, target, pools, spec, Observer(model, Probe(all_images, probe)))

    def context(
        self, namespace: Namespace, seed: int, index: int = 0, attempt: int = 0
    ) -> TamperContext:
        """A recipe's context on this target: ``namespace``'s data, ``seed`` (the builder
        derives it from the namespace, variant, instance and attempt)."""
        return TamperContext(
            target=self.target,
            target_record=self.record,
            data=DataAccess(self.pools, namespace),
            seed=seed,
            dataset=get_dataset(self.record.dataset),
            spec=self.spec,
            index=index,
            attempt=attempt,
        )


def target_spec(target: Record, info: DatasetInfo) -> InputSpec:
    """The input spec of ``target``, checked against its dataset: a registry target's must be
    the dataset's own; an imported target's (its normalization comes from the model's input
    contract) must take the dataset's image shape."""
    stored = None if target.input is None else InputSpec.from_json(target.input)
    imported = (target.architecture or "").startswith(f"{IMPORTED}:")
    expected = None if imported else input_spec(target.dataset)
    if stored is None or (expected is not None and stored != expected):
        gives = info.input_shape if expected is None else expected.to_json()
        raise TargetMismatch(
            f"target {target.record_id[:16]} takes input {target.input}, but dataset "
            f"{target.dataset!r} gives {gives}"
        )
    if stored.shape != info.input_shape:
        raise TargetMismatch(
            f"target {target.record_id[:16]} takes inputs of shape {stored.shape}, but dataset "
            f"{target.dataset!r} has images of shape {info.input_shape}"
        )
    return stored


def instance_request(variant: Variant, index: int, target: Record, config: BuildConfig) -> Record:
    """What an instance is asked to be, known before it is built: its id keys the resume.

    The built record differs only where the recipe decided (e.g. a distilled student's
    architecture); it keeps this request's id in ``metrics["request_id"]``.
    """
    return Record(
        kind="tampered",
        dataset=target.dataset,
        architecture=target.architecture,
        input=target.input,
        data_seed=target.data_seed,
        model_seed=instance_seed(config.namespace, variant.slug, index),
        params={
            "variant": variant.slug,
            "family": variant.family,
            "malicious": variant.malicious,
            "recipe": variant.tampering.params_json(),
            "instance": index,
            "namespace": config.namespace.value,
            "probe": config.probe.to_json(),
            "max_attempts": config.max_attempts,
        },
        parent=target.record_id,
    )


def build_instance(
    workspace: Workspace, variant: Variant, index: int, config: BuildConfig
) -> Record:
    """Build instance ``index`` of ``variant`` from the workspace's target; return its record.

    Raises :class:`~misentry.tamper.base.NotApplicable` when the family cannot act on the
    target (see :func:`build_all`, which records it as skipped)."""
    started = time.perf_counter()
    tampering = variant.tampering
    unobservable: list[dict[str, Any]] = []
    for attempt in range(config.max_attempts):
        seed = instance_seed(config.namespace, variant.slug, index, attempt)
        ctx = workspace.context(config.namespace, seed, index, attempt)
        tampered = tampering.build(ctx)
        seen = workspace.observer.observe(tampered.model)
        while tampering.expect_observable and not seen.observable:
            more = (
                tampering.extend(ctx, tampered)
                if tampered.extensions < tampering.max_extensions
                else None
            )
            if more is None:
                break
            tampered = more
            seen = workspace.observer.observe(tampered.model)
        if seen.observable or not tampering.expect_observable:
            break
        unobservable.append({"attempt": attempt, "seed": seed, "extensions": tampered.extensions})
    return _instance_record(
        workspace,
        variant,
        index,
        config,
        tampered,
        attempt,
        seed,
        seen,
        unobservable,
        started,
    )


def _instance_record(
    workspace: Workspace,
    variant: Variant,
    index: int,
    config: BuildConfig,
    tampered: Tampered,
    attempt: int,
    seed: int,
    seen: Observation,
    unobservable: list[dict[str, Any]],
    started: float,
) -> Record:
    stub = instance_request(variant, index, workspace.record, config)
    data = DataAccess(workspace.pools, config.namespace)
    check = data.check
    architecture = tampered.architecture or workspace.record.architecture
    assert architecture is not None
    return model_record(
        tampered.model,
        kind="tampered",
        dataset=stub.dataset,
        architecture=architecture,
        spec=workspace.spec,
        data_seed=stub.data_seed,
        model_seed=stub.model_seed,
        params=stub.params,
        parent=stub.parent,
        metrics={
            "request_id": stub.record_id,
            "variant": variant.slug,
            "seed_used": seed,
            "attempt": attempt,
            "unobservable_attempts": unobservable,
            "choices": tampered.choices,
            "objective": tampered.objective,
            "objective_met": tampered.met,
            "steps": tampered.steps,
            "epochs": tampered.epochs,
            "extensions": tampered.extensions,
            "eval_pool": "+".join(data.policy.roles[Role.CHECK]),
            "clean_accuracy": accuracy(tampered.model, check),
            "target_accuracy": accuracy(workspace.target, check),
            "changed_fraction": changed_fraction(workspace.target, tampered.model, check.x),
            "observable": seen.observable,
            "probe_flips_found": seen.flips,
            "probe_checked": seen.checked,
            "probe_size": seen.probe_size,
            "build_seconds": time.perf_counter() - started,
        },
    )


def instance_path(out: Path | str, variant: str, index: int) -> Path:
    """Where instance ``index`` of ``variant`` lives under an output folder."""
    return Path(out) / variant / f"{index:04d}"


@dataclass(frozen=True)
class BuildEvent:
    """Progress of :func:`build_all`: one per instance, built, found finished (``skipped``) or
    not applicable to the target (``record`` None, ``not_applicable`` the reason)."""

    variant: str
    index: int
    path: Path
    record: Record | None
    skipped: bool
    not_applicable: str | None = None


def build_all(
    workspace: Workspace,
    variants: Iterable[Variant],
    indices: Iterable[int],
    out: Path | str,
    config: BuildConfig | None = None,
    on_instance: Callable[[BuildEvent], None] | None = None,
) -> list[BuildEvent]:
    """Build every (variant, index) under ``out``, skipping instances already finished.

    A variant whose family cannot act on the target
    (:class:`~misentry.tamper.base.NotApplicable`) gets, for each index, an event with the
    reason and no record; nothing is written for it, and the other variants still build."""
    config = config or BuildConfig()
    events: list[BuildEvent] = []
    for variant in variants:
        reason: str | None = None
        for index in indices:
            path = instance_path(out, variant.slug, index)
            if reason is None:
                event, reason = _build_or_reuse(workspace, variant, index, path, config)
            else:
                event = BuildEvent(variant.slug, index, path, None, False, reason)
            events.append(event)
            if on_instance is not None:
                on_instance(event)
    return events


def _build_or_reuse(
    workspace: Workspace, variant: Variant, index: int, path: Path, config: BuildConfig
) -> tuple[BuildEvent, str | None]:
    """The event of one instance (built and saved, or reused), and the reason when the variant
    does not apply to the target."""
    stub = instance_request(variant, index, workspace.record, config)
    existing = _finished(path, stub.record_id)
    if existing is not None:
        return BuildEvent(variant.slug, index, path, existing, skipped=True), None
    try:
        record = build_instance(workspace, variant, index, config)
    except NotApplicable as err:
        return BuildEvent(variant.slug, index, path, None, False, err.reason), err.reason
    save_record(record, path, overwrite=path.exists())
    return BuildEvent(variant.slug, index, path, record, skipped=False), None


def _finished(path: Path, record_id: str) -> Record | None:
    if not path.exists():
        return None
    try:
        record = load_record(path)
    except RecordError:
        return None  # damaged or interrupted: rebuild it
    return record if record.metrics.get("request_id") == record_id else None
