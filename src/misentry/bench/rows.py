"""The result rows of a benchmark run, from its jobs' outputs: each bundle's detection, cost and
covertness rows, the tampering cost per variant, and the leakage and sensitivity experiments'
rows (see the README's results schema)."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import torch

from misentry.bench.experiments.covertness import Covertness, covertness
from misentry.bench.results import ResultRow, detection_rows, measurement_row
from misentry.data import Pools
from misentry.fingerprint.bundle import FingerprintSet

RESULTS_NS = tuple(range(1, 21))
"""N_S values of the detection rows in results.json (those above N are left out)."""

EXPERIMENT_NS = (1, 5)
"""N_S values of the leakage, sensitivity, ablation and frontier rows."""


def changes_text(changes: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in changes.items()) or "(the strict profile)"


def tampering_cost_rows(dataset: str, built: Iterable[tuple[str, float]]) -> list[ResultRow]:
    """Per variant, the time to build its instances: ``built`` holds (variant, build seconds
    from the instance's record) pairs; NaN (not recorded) is left out."""
    seconds: dict[str, list[float]] = defaultdict(list)
    for variant, value in built:
        if math.isfinite(value):
            seconds[variant].append(value)
    rows = []
    for variant, values in seconds.items():
        extra = {
            "build_seconds_mean": sum(values) / len(values),
            "build_seconds_max": max(values),
            "instances": len(values),
        }
        row = measurement_row("cost", dataset, "tampering", 1, extra, variant=variant)
        rows.append(replace(row, n_instances=len(values)))
    return rows


def leakage_rows(
    dataset: str,
    main: dict[str, FingerprintSet],
    leaked: dict[tuple[str, str, int], list[dict[str, Any]]],
) -> list[ResultRow]:
    grouped: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for (method, attack, _index), points in leaked.items():
        for point in points:
            grouped[(method, attack, int(point["n_leaked"]))].append(point)
    rows = []
    for (method, attack, k), points in sorted(grouped.items()):
        n_unleaked = len(main[method]) - k
        extra = {
            "n_leaked": k,
            "leaked_kept": mean_of(p["leaked_kept"] for p in points),
            "clean_accuracy": mean_of(p["clean_accuracy"] for p in points),
            "attack_success": mean_of(p["attack_success"] for p in points),
        }
        ds = {attack: [int(p["d"]) for p in points]}
        rows += detection_rows(
            dataset, method, n_unleaked, ds, EXPERIMENT_NS, "leakage", extra, f"n_leaked={k}"
        )
    return rows


def sensitivity_rows(
    dataset: str,
    main: dict[str, FingerprintSet],
    swept: dict[tuple[str, int], list[dict[str, Any]]],
) -> list[ResultRow]:
    grouped: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for (variant, _index), points in swept.items():
        for point in points:
            grouped[(variant, int(point["steps"]))].append(point)
    rows = []
    for (variant, steps), points in sorted(grouped.items()):
        extra = {
            "steps": steps,
            "clean_accuracy": mean_of(p["clean_accuracy"] for p in points),
            "attack_success": mean_of(p["attack_success"] for p in points),
        }
        for method, fps in main.items():
            ds = {variant: [int(p["d"][method]) for p in points]}
            rows += detection_rows(
                dataset, method, len(fps), ds, EXPERIMENT_NS, "sensitivity", extra, f"steps={steps}"
            )
    return rows


def mean_of(values: Iterable[Any]) -> float | None:
    numbers = [float(v) for v in values if v is not None]
    return sum(numbers) / len(numbers) if numbers else None


def bundle_rows(
    dataset: str,
    method: str,
    fps: FingerprintSet,
    d_per_variant: dict[str, list[int]],
    ns_values: Iterable[int],
    target: torch.nn.Module | None = None,
    pools: Pools | None = None,
    measured: Covertness | None = None,
) -> list[ResultRow]:
    """One bundle's rows: detection for each variant and N_S, its cost per fingerprint (seconds,
    forward and backward passes, zoo included, also a zoo built by jobs of its own) and its
    covertness against the ``test`` pool (``measured``, or measured here given the target and
    its pools; none without either)."""
    m, n = fps.manifest, len(fps)
    rows = detection_rows(dataset, method, n, d_per_variant, ns_values)
    forward = m.get("forward_passes", 0) + m.get("zoo_forward_passes", 0)
    backward = m.get("backward_passes", 0) + m.get("zoo_backward_passes", 0)
    seconds = m.get("generation_seconds", float("nan")) + m.get("zoo_prebuilt_seconds", 0.0)
    cost = {
        "seconds_per_fingerprint": seconds / n,
        "forward_per_fingerprint": forward / n,
        "backward_per_fingerprint": backward / n,
    }
    rows.append(measurement_row("cost", dataset, method, n, cost))
    if measured is None and target is not None and pools is not None:
        measured = covertness(target, fps, pools["test"].x, pools["source"].x)
    if measured is not None:
        rows.append(measurement_row("covertness", dataset, method, n, measured.to_row_extra()))
    return rows
