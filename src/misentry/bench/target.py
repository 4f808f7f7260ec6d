"""Benchmarking a target record the user already has (``misentry bench --target DIR``).

A preset trains its target; :func:`target_preset` instead takes a ``target`` record that exists
(imported with ``misentry import`` or trained with ``misentry train``) and reads the dataset
from it. Nothing is trained: the run's ``target`` job copies the record (verified) into its
job folder, so the run keeps working if the original folder moves.

A BIVBench variant that cannot be built from the model (an imported model that a family cannot
rebuild or retrain, say) does not stop the run: :func:`build_instance_or_skip` reports the
builder's failure as the variant's reason, the run goes on without the variant, and the
results folder lists it in ``skipped.json`` (the report's "Skipped variants" section). A
skipped instance leaves no finished job behind, so a rerun tries it again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from misentry.bench.jobs import tasks
from misentry.bench.jobs.task import Progress
from misentry.bench.presets import DEMO_INSTANCES, Preset
from misentry.bench.results import SKIPPED_FILE
from misentry.data import get_dataset
from misentry.models import load_record, save_record

TARGET_METHODS = ("misentry",)
"""Methods of a ``--target`` run by default: strict MiSentry alone, the method ``misentry
fingerprint`` would be asked for to protect the model."""

TARGET_INSTANCES = DEMO_INSTANCES
"""Instances per variant of a ``--target`` run by default: 3, as ``mnist5k-demo``."""

TARGET_EXPERIMENTS: tuple[str, ...] = ()
"""Optional experiments of a ``--target`` run by default: none (detection, covertness and cost
always run)."""


def target_preset(target: Path | str, root: Path | str | None = None) -> Preset:
    """The run of the target record at ``target`` with the ``--target`` defaults: its dataset,
    :data:`TARGET_METHODS`, every variant, :data:`TARGET_INSTANCES` instances, 100 fingerprints,
    N_S 1 and 5 and :data:`TARGET_EXPERIMENTS` (override them with
    :func:`misentry.bench.runner.resolve`). The record is verified here; a record that is not a
    target, or a dataset read from disk without ``root``, fails before any work."""
    path = Path(target).resolve()
    record = load_record(path)
    if record.kind != "target":
        raise ValueError(
            f"--target {target}: a {record.kind!r} record, not a target; give the folder of "
            "a record made by `misentry import` or `misentry train`"
        )
    info = get_dataset(record.dataset)
    if info.needs_root and root is None:
        raise ValueError(
            f"--target {target}: its dataset {record.dataset!r} is read from a folder; pass "
            f"--root DIR (the folder it was imported or trained with), laid out as:\n{info.layout}"
        )
    return Preset(
        name=f"target {path.name}",
        dataset=record.dataset,
        methods=TARGET_METHODS,
        instances=TARGET_INSTANCES,
        experiments=TARGET_EXPERIMENTS,
        target=str(path),
    )


def copy_target(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """The ``target`` job of a ``--target`` run: the record at ``source`` (its hashes checked)
    saved into ``folder/record``."""
    del progress
    record = load_record(payload["source"])
    if record.record_id != payload["record_id"]:
        raise ValueError(
            f"--target {payload['source']}: the record changed since the run was planned "
            f"(id {record.record_id[:16]}, expected {payload['record_id'][:16]}); run again"
        )
    save_record(record, Path(payload["folder"]) / "record", overwrite=True)
    return {"record_id": record.record_id}


def build_instance_or_skip(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """:func:`misentry.bench.jobs.tasks.build_instance`, except that a variant the builder
    cannot build from this target is reported, not raised: the family's
    :class:`~misentry.tamper.base.NotApplicable` reason, or ``failed: ERROR: message`` for a
    recipe that raised. ``folder/skipped.json`` holds it, and the result says ``unfinished``
    (no ``job.json``: a rerun tries again)."""
    from misentry.tamper.builder import BuildConfig, build_all
    from misentry.tamper.namespace import Namespace
    from misentry.tamper.registry import get_variant

    del progress
    started = time.perf_counter()
    folder = Path(payload["folder"])
    (folder / SKIPPED_FILE).unlink(missing_ok=True)
    workspace = tasks.load_workspace(payload)
    variant = get_variant(payload["variant"])
    build = BuildConfig(namespace=Namespace(payload["namespace"]))
    try:
        (event,) = build_all(workspace, [variant], [payload["index"]], folder, build)
    except Exception as err:  # whatever a recipe raises: reported as the variant's reason
        return _skip(payload, f"failed: {type(err).__name__}: {err}")
    if event.record is None:
        return _skip(payload, event.not_applicable or "the builder built no instance")
    return {"record_id": event.record.record_id, "seconds": time.perf_counter() - started}


def _skip(payload: dict[str, Any], reason: str) -> dict[str, Any]:
    document = {"variant": payload["variant"], "index": payload["index"], "reason": reason}
    tasks.write_json(Path(payload["folder"]), SKIPPED_FILE, document)
    return {"skipped": reason, "unfinished": True}


def skip_reason(folder: Path) -> str | None:
    """Why the instance job in ``folder`` built nothing; None when it built its instance."""
    path = folder / SKIPPED_FILE
    if not path.is_file():
        return None
    return str(json.loads(path.read_text())["reason"])
