"""The benchmark's jobs: module-level functions of a JSON payload, run by any executor.

Each function reads its inputs from the paths in its payload, writes its outputs into
``payload["folder"]`` and returns a small JSON-ready summary. None of them writes the job's
``job.json`` marker: the runner does that in the driver once the function returned, so a job
that died half-way is run again. Functions take no callbacks, so they run the same way in this
process, in a spawned worker process or in a Ray task; in this process the runner may set
:data:`PROGRESS` to see a job's inner stages (a MiSentry search's steps).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from misentry.atomic import write_text_atomic

if TYPE_CHECKING:
    from misentry.tamper.builder import Workspace

PROGRESS: Callable[[str, int, int], None] | None = None
"""Inner progress of the job running in this process (set by the runner, local executor only)."""


def _report(stage: str, done: int, total: int) -> None:
    if PROGRESS is not None:
        PROGRESS(stage, done, total)


def _root(payload: dict[str, Any]) -> Path | None:
    root = payload.get("root")
    return None if root is None else Path(root)


_WORKSPACES: dict[tuple[str, str | None], Workspace] = {}
"""The last :class:`Workspace` this process loaded, by (target record id, root): loading one reads
the pools and runs the probe, seconds that every instance, leakage and sensitivity job of a run
would otherwise repeat."""


def load_workspace(payload: dict[str, Any]) -> Workspace:
    """The :class:`Workspace` of the target record at ``payload["target_path"]`` (dataset folder
    ``payload["root"]``), loaded once per process."""
    from misentry.models import load_record
    from misentry.tamper.builder import Workspace

    target = load_record(payload["target_path"])
    key = (target.record_id, payload.get("root"))
    if key not in _WORKSPACES:
        _WORKSPACES.clear()
        _WORKSPACES[key] = Workspace.load(target, _root(payload))
    return _WORKSPACES[key]


def _write_json(folder: Path, name: str, document: Any) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / name, json.dumps(document, indent=1))


def train_target(payload: dict[str, Any]) -> dict[str, Any]:
    """Train the preset's target into ``folder/record``; ``target`` holds the TargetConfig's
    fields, its ``train`` as :meth:`TrainConfig.to_json` gives it."""
    from misentry.models import TargetConfig, TrainConfig, save_record
    from misentry.models import train_target as train

    fields = payload["target"]
    config = TargetConfig(**{**fields, "train": TrainConfig.from_json(fields["train"])})
    record = train(
        config,
        _root(payload),
        on_step=lambda state: _report("target", state.step, state.total_steps),
    )
    save_record(record, Path(payload["folder"]) / "record", overwrite=True)
    return {"record_id": record.record_id}


def build_instance(payload: dict[str, Any]) -> dict[str, Any]:
    """Build instance ``index`` of ``variant`` in ``namespace`` from the target record at
    ``target_path`` into ``folder``."""
    from misentry.models import load_record
    from misentry.tamper.builder import BuildConfig, build_all, instance_path
    from misentry.tamper.namespace import Namespace
    from misentry.tamper.registry import get_variant

    started = time.perf_counter()
    bench = load_workspace(payload)
    variant = get_variant(payload["variant"])
    folder = Path(payload["folder"])
    build = BuildConfig(namespace=Namespace(payload["namespace"]))
    build_all(bench, [variant], [payload["index"]], folder, build)
    record = load_record(instance_path(folder, variant.slug, payload["index"]))
    return {"record_id": record.record_id, "seconds": time.perf_counter() - started}


def build_zoo_model(payload: dict[str, Any]) -> dict[str, Any]:
    """Build replicate ``replicate`` of MiSentry's zoo member ``member`` (e.g.
    ``ft_last:1e-4x4``) from the target at ``target_path`` into ``folder/record``."""
    from misentry.fingerprint.methods.misentry.zoo import ZooMember, build_zoo, save_zoo_model

    bench = load_workspace(payload)
    member = ZooMember.parse(payload["member"])
    (model,) = build_zoo(bench.target, bench.record, bench.pools, [member], 1, payload["replicate"])
    save_zoo_model(model, bench.record, Path(payload["folder"]) / "record")
    return {"seconds": model.seconds}


def generate_bundle(payload: dict[str, Any]) -> dict[str, Any]:
    """Generate ``n`` fingerprints with ``method`` (``params`` overriding its defaults) for the
    target at ``target_path``, seed ``seed``, into ``folder/bundle``; ``zoo`` names the zoo
    models built beforehand (name -> record folder)."""
    from misentry.data import get_dataset
    from misentry.fingerprint.base import SearchContext
    from misentry.fingerprint.bundle import save_bundle
    from misentry.fingerprint.registry import get_method
    from misentry.models import load_record, model_from_record

    method, n, seed = payload["method"], payload["n"], payload["seed"]
    target = load_record(payload["target_path"])
    pools = get_dataset(target.dataset).pools(target.data_seed, _root(payload))

    def inner(stage: str, done: int, total: int) -> None:
        _report(f"{payload['label']}: {stage}", done, total)

    generator = get_method(method, **payload["params"])
    normal = pools["test"].x
    zoo = {name: Path(path) for name, path in payload.get("zoo", {}).items()}
    context = SearchContext(normal=normal, pools=pools, record=target, progress=inner, zoo=zoo)
    manifest = {
        "target_id": target.record_id,
        "dataset": target.dataset,
        "architecture": target.architecture,
        "data_seed": target.data_seed,
        "n": n,
        "seed": seed,
    }
    model = model_from_record(target)
    fps = generator.generate(model, pools["source"], n, seed, normal, manifest, context)
    save_bundle(fps, Path(payload["folder"]) / "bundle")
    return {"n": len(fps)}


def evaluate(payload: dict[str, Any]) -> dict[str, Any]:
    """d (fingerprints labelled differently) of the bundle at ``bundle_path`` on each instance of
    ``instances`` (``[{"variant", "index", "path"}]``), into ``folder/d.json``."""
    from misentry.bench.metrics import disagreements
    from misentry.fingerprint.bundle import load_bundle
    from misentry.models import load_record, model_from_record

    fps = load_bundle(payload["bundle_path"])
    rows = []
    for instance in payload["instances"]:
        model = model_from_record(load_record(instance["path"]))
        count = disagreements(model, fps.x, fps.labels)
        rows.append({"variant": instance["variant"], "index": instance["index"], "d": count})
    _write_json(Path(payload["folder"]), "d.json", {"d": rows})
    return {"instances": len(rows)}


def leakage(payload: dict[str, Any]) -> dict[str, Any]:
    """The adaptive attack ``attack`` on the instance at ``instance_path`` against the bundle at
    ``bundle_path``, for each ``n_leaked``: the attacker keeps the labels of a seeded random
    ``n_leaked`` of the fingerprints; d is counted on the others. Into ``folder/leakage.json``."""
    from misentry.bench.experiments.leakage import (
        adaptive_attack,
        leak_split,
        unleaked_disagreements,
    )
    from misentry.fingerprint.bundle import load_bundle
    from misentry.models import load_record, model_from_record

    bench = load_workspace(payload)
    fps = load_bundle(payload["bundle_path"])
    tampered = model_from_record(load_record(payload["instance_path"]))
    points = []
    for n_leaked in payload["n_leaked"]:
        seed = payload["seed"] + 1000 * payload["index"] + n_leaked
        leaked, unleaked = leak_split(len(fps), n_leaked, seed)
        result = adaptive_attack(
            bench, tampered, payload["attack"], fps.x[leaked], fps.labels[leaked], seed
        )
        points.append(
            {
                "n_leaked": n_leaked,
                "n_unleaked": len(unleaked),
                "d": unleaked_disagreements(result.model, fps, unleaked),
                "leaked_kept": result.leaked_kept,
                "clean_accuracy": result.clean_accuracy,
                "attack_success": result.attack_success,
                "steps": result.steps,
                "seconds": result.seconds,
            }
        )
    _write_json(Path(payload["folder"]), "leakage.json", {"points": points})
    return {"points": len(points)}


def sensitivity(payload: dict[str, Any]) -> dict[str, Any]:
    """``variant`` (instance ``index``) trained for each of ``steps`` optimizer steps from the
    target at ``target_path``; d of each bundle of ``bundles`` (``{method: path}``) at each step
    count. Into ``folder/sensitivity.json``."""
    from misentry.bench.experiments.sensitivity import tamper_at_steps_many
    from misentry.bench.metrics import disagreements
    from misentry.fingerprint.bundle import load_bundle

    bench = load_workspace(payload)
    bundles = {method: load_bundle(path) for method, path in payload["bundles"].items()}
    results = tamper_at_steps_many(bench, payload["variant"], payload["index"], payload["steps"])
    points = []
    for result in results:
        d = {m: disagreements(result.model, fps.x, fps.labels) for m, fps in bundles.items()}
        points.append(
            {
                "steps": result.steps,
                "d": d,
                "n": {m: len(fps) for m, fps in bundles.items()},
                "clean_accuracy": result.clean_accuracy,
                "attack_success": result.attack_success,
            }
        )
    _write_json(Path(payload["folder"]), "sensitivity.json", {"points": points})
    return {"points": len(points)}


def set_threads(threads: int | None) -> None:
    """Pin torch's intra-op threads (None: leave as is)."""
    if threads is not None:
        torch.set_num_threads(threads)
