"""The runner's jobs: module-level functions of a JSON payload, run by any executor.

Each function reads its inputs from the paths in its payload, writes its outputs into
``payload["folder"]`` and returns a small JSON-ready summary; ``progress(stage, done, total)``
follows its inner stages (the executor passes the run's callback to jobs in this process, a
quiet one elsewhere). None of them writes the job's ``job.json`` marker: the runner does that in
the driver once the function returned, so a job that died half-way is run again. The jobs of
the experiments that add their own live in their modules (:mod:`misentry.bench.experiments`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from misentry.atomic import write_text_atomic
from misentry.bench.jobs.task import Progress

if TYPE_CHECKING:
    from misentry.fingerprint.bundle import FingerprintSet
    from misentry.tamper.builder import Workspace

BANDS = ("none", "covert")
"""Output bands a bundle may be held to (``--band``): ``covert`` keeps, of every other method
than MiSentry, only fingerprints inside the covert band (see :func:`hold_to_covert_band`)."""


def root_of(payload: dict[str, Any]) -> Path | None:
    """The dataset folder the payload names (None: an embedded dataset)."""
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
        _WORKSPACES[key] = Workspace.load(target, root_of(payload))
    return _WORKSPACES[key]


def write_json(folder: Path, name: str, document: Any) -> None:
    """Write ``document`` as JSON to ``folder/name``, atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / name, json.dumps(document, indent=1))


def train_target(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Train the preset's target into ``folder/record``; ``target`` holds the TargetConfig's
    fields, its ``train`` as :meth:`TrainConfig.to_json` gives it."""
    from misentry.models import TargetConfig, TrainConfig, save_record
    from misentry.models import train_target as train

    fields = payload["target"]
    config = TargetConfig(**{**fields, "train": TrainConfig.from_json(fields["train"])})
    record = train(
        config,
        root_of(payload),
        on_step=lambda state: progress("target", state.step, state.total_steps),
    )
    save_record(record, Path(payload["folder"]) / "record", overwrite=True)
    return {"record_id": record.record_id}


def build_instance(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Build instance ``index`` of ``variant`` in ``namespace`` from the target record at
    ``target_path`` into ``folder``."""
    import time

    from misentry.models import load_record
    from misentry.tamper.builder import BuildConfig, build_all, instance_path
    from misentry.tamper.namespace import Namespace
    from misentry.tamper.registry import get_variant

    del progress
    started = time.perf_counter()
    workspace = load_workspace(payload)
    variant = get_variant(payload["variant"])
    folder = Path(payload["folder"])
    build = BuildConfig(namespace=Namespace(payload["namespace"]))
    build_all(workspace, [variant], [payload["index"]], folder, build)
    record = load_record(instance_path(folder, variant.slug, payload["index"]))
    return {"record_id": record.record_id, "seconds": time.perf_counter() - started}


def build_zoo_model(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Build replicate ``replicate`` of MiSentry's zoo member ``member`` (e.g.
    ``ft_last:1e-4x4``) from the target at ``target_path`` into ``folder/record``."""
    from misentry.fingerprint.methods.misentry.zoo import ZooMember, build_zoo, save_zoo_model

    del progress
    workspace = load_workspace(payload)
    member = ZooMember.parse(payload["member"])
    (model,) = build_zoo(
        workspace.target, workspace.record, workspace.pools, [member], 1, payload["replicate"]
    )
    save_zoo_model(model, workspace.record, Path(payload["folder"]) / "record")
    return {"seconds": model.seconds}


def generate_bundle(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Generate ``n`` fingerprints with ``method`` (``params`` overriding its defaults) for the
    target at ``target_path``, seed ``seed``, into ``folder/bundle``, with
    :func:`misentry.fingerprint.service.make_bundle`; ``zoo`` names the zoo models built
    beforehand (name -> record folder). With ``band`` ``covert``, the bundle is held to the
    covert band (:func:`hold_to_covert_band`)."""
    from misentry.fingerprint.bundle import save_bundle
    from misentry.fingerprint.service import make_bundle

    def inner(stage: str, done: int, total: int) -> None:
        progress(f"{payload['label']}: {stage}", done, total)

    folder = Path(payload["folder"]) / "bundle"
    zoo = {name: Path(path) for name, path in payload.get("zoo", {}).items()}
    options: dict[str, Any] = {
        "seed": payload["seed"],
        "overrides": payload["params"],
        "root": root_of(payload),
        "zoo": zoo,
        "progress": inner,
        "replace": True,
        # the benchmark's bundles are research bundles: the same float32 stack, unless a job
        # asks for a deployment tolerance (the tolerance experiment)
        "tolerance": payload.get("tolerance", "exact"),
    }
    if payload.get("band", "none") == "none":
        fps = make_bundle(
            payload["target_path"], payload["method"], payload["n"], folder, **options
        )
        return {"n": len(fps)}
    fps = hold_to_covert_band(payload["target_path"], payload["method"], payload["n"], options)
    save_bundle(fps, folder)
    return {"n": len(fps)}


def hold_to_covert_band(
    target_path: str, method: str, n: int, options: dict[str, Any]
) -> FingerprintSet:
    """``method`` run on every source image, and the first ``n`` of its fingerprints whose target
    entropy and confidence lie inside the covert band (the [10th, 90th] percentile band of the
    owner's ``val`` images of the same label), so that methods compare at equal output
    covertness. The manifest says ``band: covert`` and how many were inside (``in_band``)."""
    from misentry.data import get_dataset
    from misentry.fingerprint.base import GenerationError
    from misentry.fingerprint.bundle import FingerprintSet
    from misentry.fingerprint.methods.misentry import inside_bands, normal_bands
    from misentry.fingerprint.service import make_bundle
    from misentry.models import load_model

    target, record = load_model(target_path)
    pools = get_dataset(record.dataset).pools(record.data_seed, options["root"])
    fps = make_bundle(target_path, method, len(pools["source"]), None, **options)
    keep = inside_bands(target, fps.x, normal_bands(target, pools["val"].x))
    index = keep.nonzero().squeeze(1)[:n]
    if len(index) == 0:
        raise GenerationError(
            f"none of {method}'s {len(fps)} fingerprints lies inside the covert band; leave "
            f"{method} out of the methods, or run without --band covert"
        )
    samples = [fps.manifest["samples"][i] for i in index.tolist()]
    manifest = {**fps.manifest, "samples": samples, "band": "covert", "in_band": len(index)}
    return FingerprintSet(fps.images[index], fps.labels[index], fps.source_indices[index], manifest)


def evaluate(payload: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """d (fingerprints labelled differently) of the bundle at ``bundle_path`` on each instance of
    ``instances`` (``[{"variant", "index", "path"}]``), into ``folder/d.json``."""
    from misentry.bench.metrics import disagreements
    from misentry.fingerprint.bundle import load_bundle
    from misentry.models import load_record, model_from_record

    del progress
    fps = load_bundle(payload["bundle_path"])
    rows = []
    for instance in payload["instances"]:
        model = model_from_record(load_record(instance["path"]))
        count = disagreements(model, fps.x, fps.labels)
        rows.append({"variant": instance["variant"], "index": instance["index"], "d": count})
    write_json(Path(payload["folder"]), "d.json", {"d": rows})
    return {"instances": len(rows)}
