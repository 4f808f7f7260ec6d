"""The owner's check before shipping: does every benign re-deployment keep every fingerprint's
label?

:func:`check_stability` sends a bundle through the benign re-deployment matrix
(:mod:`misentry.models.stacks`) on the target it was made for, every level of it, so the owner
sees what looser serving would do as well as what the bundle's declared tolerance promises
(:mod:`misentry.fingerprint.tolerance`; a bundle made before tolerances existed is ``exact``).
Given an ONNX file, it adds the real ONNX Runtime: graph optimizations disabled and all enabled,
each with 1 and 2 intra-op threads (level ``fp32``). Given an endpoint, it adds the model as it is
served, which is always within the tolerance: the owner declared it the way the model is served.

A row whose stack is within the tolerance and changed a label fails the check. So does a real
stack (ONNX Runtime, the endpoint) within the tolerance that could not be checked: a query that
failed is never "stable". An emulated stack that cannot run this model (a program that does not
trace) is reported with its reason and does not fail the check.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from misentry.fingerprint.base import weights_digest
from misentry.fingerprint.bundle import BundleError, FingerprintSet
from misentry.fingerprint.tolerance import Tolerance, run_stack
from misentry.models import logits
from misentry.models.oracle import LabelOracle, OracleError
from misentry.models.stacks import ALL_STACKS, LEVELS, Stack
from misentry.verify.false_alarm import bundle_tolerance as declared_tolerance
from misentry.verify.http import HttpOracle
from misentry.verify.onnx import OnnxOracle

KINDS = ("emulated", "onnxruntime", "endpoint")
"""Where a row's labels come from: an emulated stack of the matrix, ONNX Runtime, the endpoint."""

REAL_KINDS = ("onnxruntime", "endpoint")
"""The kinds whose failure to answer fails the check."""

SHOWN_INDICES = 20
"""Most bundle indices a row lists of the fingerprints whose label changed."""

ONNX_LEVEL = "fp32"
"""The level of the ONNX Runtime rows: another float32 execution of the same weights."""

ONNX_VARIANTS = ((False, 1), (False, 2), (True, 1), (True, 2))
"""The ONNX Runtime rows: (graph optimizations enabled, intra-op threads)."""

Progress = Callable[[str, int, int], None]


class StabilityError(ValueError):
    """A stability check that cannot be made (another model than the bundle's, an unreadable
    tolerance); the message says what to give instead."""


@dataclass(frozen=True)
class StackResult:
    """One stack's labels of the bundle.

    Attributes:
        stack: the stack's name (``batch-1``, ``onnxruntime-noopt-2t``, ``endpoint``).
        level: its level of :data:`~misentry.models.stacks.LEVELS` (``fp32`` for ONNX Runtime,
            the bundle's tolerance for the endpoint).
        within: whether the level is within the bundle's tolerance.
        changed: fingerprints whose label changed on any draw of the stack (for an emulated
            stack: another class's logit reached the label's; a tie counts, since a server may
            break it either way).
        total: fingerprints checked.
        changed_indices: the bundle indices of the first :data:`SHOWN_INDICES` of them.
        error: why the stack could not run or the oracle failed (None: it ran).
        kind: one of :data:`KINDS`.
    """

    stack: str
    level: str
    within: bool
    changed: int
    total: int
    changed_indices: tuple[int, ...] = ()
    error: str | None = None
    kind: str = "emulated"

    @property
    def fails(self) -> bool:
        """Whether this row fails the check: within the tolerance and a label changed, or a real
        stack within the tolerance that could not be checked."""
        broken = self.error is not None and self.kind in REAL_KINDS
        return self.within and (self.changed > 0 or broken)

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "level": self.level,
            "within": self.within,
            "changed": self.changed,
            "total": self.total,
            "changed_indices": list(self.changed_indices),
            "error": self.error,
            "kind": self.kind,
        }


@dataclass(frozen=True)
class StabilityReport:
    """Every stack's labels of a bundle, and whether its declared tolerance holds."""

    tolerance: str
    rows: tuple[StackResult, ...]

    @property
    def ok(self) -> bool:
        """Every stack within the tolerance kept every label, and every real stack within it
        answered."""
        return not any(row.fails for row in self.rows)

    @property
    def failed(self) -> tuple[StackResult, ...]:
        """The stacks within the tolerance that changed a label."""
        return tuple(row for row in self.rows if row.within and row.changed > 0)

    @property
    def errors(self) -> tuple[StackResult, ...]:
        """The real stacks within the tolerance that could not be checked."""
        return tuple(r for r in self.rows if r.within and r.error and r.kind in REAL_KINDS)

    @property
    def checked(self) -> tuple[StackResult, ...]:
        """The stacks within the tolerance that ran."""
        return tuple(row for row in self.rows if row.within and row.error is None)

    @property
    def unavailable(self) -> tuple[StackResult, ...]:
        """The emulated stacks that cannot run this model (reported, never failing)."""
        return tuple(r for r in self.rows if r.error is not None and r.kind == "emulated")

    def to_json(self) -> dict[str, Any]:
        return {
            "tolerance": self.tolerance,
            "ok": self.ok,
            "checked": len(self.checked),
            "failed": [row.stack for row in self.failed],
            "errors": [row.stack for row in self.errors],
            "rows": [row.to_json() for row in self.rows],
        }


def bundle_tolerance(bundle: FingerprintSet) -> Tolerance:
    """The tolerance a bundle declares (:func:`misentry.verify.false_alarm.bundle_tolerance`;
    ``exact`` for a bundle made before tolerances existed). StabilityError for an unreadable
    entry."""
    try:
        return Tolerance(declared_tolerance(bundle))
    except BundleError as err:
        raise StabilityError(str(err)) from None


def check_target(bundle: FingerprintSet, model: nn.Module) -> None:
    """StabilityError unless ``model`` has the weights the bundle records
    (``target_weights_sha256``; a bundle that records none is taken at its word)."""
    recorded = bundle.manifest.get("target_weights_sha256")
    if recorded is None:
        return
    digest = weights_digest(model)
    if digest != recorded:
        raise StabilityError(
            f"the target's weights (sha256 {digest[:12]}…) are not those the fingerprints were "
            f"made for (sha256 {str(recorded)[:12]}…): a stability check of another model says "
            "nothing; give the target record the bundle was generated from"
        )


def check_stability(
    bundle: FingerprintSet,
    model: nn.Module,
    *,
    onnx: Path | str | None = None,
    endpoint: str | LabelOracle | None = None,
    http_options: Mapping[str, Any] | None = None,
    levels: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> StabilityReport:
    """Run ``bundle`` through the benign re-deployment matrix on ``model``, its target.

    Arguments:
        bundle: the fingerprints; their tolerance is :func:`bundle_tolerance`.
        model: the target the bundle was made for (checked by :func:`check_target`).
        onnx: an ONNX file of the target (:func:`~misentry.verify.onnx.export_onnx`), run by
            ONNX Runtime in four ways (:data:`ONNX_VARIANTS`); needs the onnx extra.
        endpoint: the served model: an Open Inference Protocol URL (``.../v2/models/NAME``) or
            any :class:`~misentry.models.oracle.LabelOracle`.
        http_options: keyword arguments of :class:`~misentry.verify.http.HttpOracle` for a URL
            (``headers``, ``timeout``, ``output``...); the bundle's input contract and the
            target's class count are passed for you.
        levels: the levels whose emulated stacks run (default: all of
            :data:`~misentry.models.stacks.LEVELS`).
        progress: ``progress(stage, done, total)`` after each stack; the stages are
            ``emulated``, ``onnxruntime`` and ``endpoint``.

    Returns the report: one row per stack, emulated stacks first (strictest level first), then
    ONNX Runtime's, then the endpoint's. An oracle that fails becomes its row's ``error``.
    """
    tolerance = bundle_tolerance(bundle)
    check_target(bundle, model)
    chosen = [Tolerance.parse(level) for level in levels or LEVELS]
    classes = int(logits(model, bundle.x[:1]).shape[1])
    report = progress or _silent
    stacks = [stack for stack in ALL_STACKS if stack.level in chosen]
    rows = []
    for done, stack in enumerate(stacks, 1):
        rows.append(_emulated_row(bundle, model, tolerance, stack))
        report("emulated", done, len(stacks))
    if onnx is not None:
        rows.extend(_onnx_rows(bundle, Path(onnx), tolerance, classes, report))
    if endpoint is not None:
        rows.append(_endpoint_row(bundle, endpoint, tolerance, classes, http_options or {}))
        report("endpoint", 1, 1)
    return StabilityReport(tolerance.value, tuple(rows))


def _silent(_stage: str, _done: int, _total: int) -> None:
    return None


def _emulated_row(
    bundle: FingerprintSet, model: nn.Module, tolerance: Tolerance, stack: Stack
) -> StackResult:
    """One emulated stack's row; a stack that cannot run the model keeps its reason."""
    within = tolerance.covers(Tolerance(stack.level))
    try:
        run = run_stack(stack, model, bundle.x, bundle.labels)
    except RuntimeError as err:  # a torch op this stack's numerics do not support
        message = (
            f"the stack failed on this model: {str(err).splitlines()[0] if str(err) else err!r}"
        )
        return StackResult(stack.name, stack.level, within, 0, len(bundle), error=message)
    if run.unavailable is not None:
        return StackResult(stack.name, stack.level, within, 0, len(bundle), error=run.unavailable)
    return _row(stack.name, stack.level, within, (run.margins <= 0).any(0), "emulated")


def _row(stack: str, level: str, within: bool, changed: torch.Tensor, kind: str) -> StackResult:
    indices = changed.nonzero().flatten().tolist()
    return StackResult(
        stack,
        level,
        within,
        changed=len(indices),
        total=int(changed.numel()),
        changed_indices=tuple(indices[:SHOWN_INDICES]),
        kind=kind,
    )


def _onnx_rows(
    bundle: FingerprintSet, path: Path, tolerance: Tolerance, classes: int, report: Progress
) -> list[StackResult]:
    within = tolerance.covers(Tolerance(ONNX_LEVEL))
    rows = []
    for done, (optimized, threads) in enumerate(ONNX_VARIANTS, 1):
        name = f"onnxruntime-{'opt' if optimized else 'noopt'}-{threads}t"
        try:
            oracle = RuntimeVariant(
                path,
                optimized=optimized,
                threads=threads,
                contract=bundle.contract,
                num_classes=classes,
            )
        except (ValueError, OSError, ImportError) as err:
            rows.append(_failed(name, ONNX_LEVEL, within, len(bundle), "onnxruntime", err))
        else:
            rows.append(_oracle_row(bundle, oracle, name, ONNX_LEVEL, within, "onnxruntime"))
        report("onnxruntime", done, len(ONNX_VARIANTS))
    return rows


def _endpoint_row(
    bundle: FingerprintSet,
    endpoint: str | LabelOracle,
    tolerance: Tolerance,
    classes: int,
    options: Mapping[str, Any],
) -> StackResult:
    """The served model's row: always within the tolerance (the owner declared the tolerance
    for the way it is served). A URL's oracle is made here and closed after."""
    level = tolerance.value
    if isinstance(endpoint, LabelOracle):
        return _oracle_row(bundle, endpoint, "endpoint", level, True, "endpoint")
    contract = bundle.contract
    wire = {} if contract.is_identity else {"contract": contract}
    try:
        oracle = HttpOracle(endpoint, **{"num_classes": classes, **wire, **options})
    except (ValueError, TypeError) as err:  # a bad URL or option
        return _failed("endpoint", level, True, len(bundle), "endpoint", err)
    with oracle:
        return _oracle_row(bundle, oracle, "endpoint", level, True, "endpoint")


def _oracle_row(
    bundle: FingerprintSet, oracle: LabelOracle, name: str, level: str, within: bool, kind: str
) -> StackResult:
    """The row of one oracle's labels of the bundle; a failure to answer is the row's error."""
    try:
        answers = oracle.labels(bundle.images)
    except (OracleError, ValueError, OSError) as err:
        return _failed(name, level, within, len(bundle), kind, err)
    return _row(name, level, within, answers != bundle.labels, kind)


def _failed(
    name: str, level: str, within: bool, total: int, kind: str, err: Exception
) -> StackResult:
    text = str(err) or type(err).__name__
    message = f"{err.reason}: {text}" if isinstance(err, OracleError) else text
    return StackResult(name, level, within, 0, total, error=message, kind=kind)


class RuntimeVariant(OnnxOracle):
    """An :class:`~misentry.verify.onnx.OnnxOracle` whose session runs with ONNX Runtime's graph
    optimizations all enabled (its default) or all disabled, on ``threads`` intra-op threads."""

    def __init__(self, path: Path | str, *, optimized: bool, threads: int, **kwargs: Any) -> None:
        super().__init__(path, threads=threads, **kwargs)
        self.optimized = optimized
        if optimized:
            return
        ort = importlib.import_module("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime's errors derive from Exception only
            raise ValueError(f"ONNX Runtime cannot load {self.path} unoptimized: {err}") from None

    def describe(self) -> str:
        return f"onnx {self.path} (graph optimizations {'all' if self.optimized else 'off'})"
