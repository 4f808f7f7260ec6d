"""Making and saving a fingerprint bundle: the one way the CLI, the benchmark and scripts do it.

:func:`make_bundle` loads a target record (:func:`generate_bundle` takes one in memory), cuts
its pools, runs a registered generator on the ``source`` pool and saves the bundle;
:func:`build_generator` checks parameter overrides against the method's parameter dataclass
first, and :func:`parse_overrides` reads them from ``KEY=VALUE`` strings.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from misentry.data import get_dataset
from misentry.fingerprint.base import GenerationError, Generator, SearchContext
from misentry.fingerprint.bundle import (
    CONTRACT_KEY,
    MANIFEST_FILE,
    FingerprintSet,
    model_contract,
    save_bundle,
)
from misentry.fingerprint.registry import get_method
from misentry.fingerprint.tolerance import DEFAULT_TOLERANCE, Tolerance
from misentry.models import Record, load_model


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> ``{key: value}``: ``-`` in keys becomes ``_``, VALUE is parsed
    as JSON when it parses (a list becomes a tuple), else kept as the string.

    Raises:
        ValueError: an item without ``=``, with an empty key, or a key given twice.
    """
    overrides: dict[str, Any] = {}
    for item in items:
        key, equals, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not equals or not key:
            raise ValueError(f"{item!r}: expected KEY=VALUE, e.g. steps=30")
        if key in overrides:
            raise ValueError(f"{key} is given twice")
        overrides[key] = parse_value(text)
    return overrides


def parse_value(text: str) -> Any:
    """JSON when ``text`` parses as JSON (lists become tuples), else the string itself."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return tuple(value) if isinstance(value, list) else value


def build_generator(method: str, overrides: Mapping[str, Any] | None = None) -> Generator:
    """The registry's generator ``method`` with ``overrides``, after checking each name against
    the method's parameter dataclass and each value's type against the default's (an int is
    taken where a float is due, a list where a tuple is due, and converted).

    Raises:
        KeyError: an unknown method (the message lists the methods).
        ValueError: an unknown parameter (the message lists the parameters), a value of the
            wrong type (the message names the type and the default), or values the parameter
            class rejects.
    """
    default = get_method(method)
    fields = [f.name for f in dataclasses.fields(default.params) if f.init]
    checked: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if key not in fields:
            known = ", ".join(fields) if fields else "none"
            raise ValueError(f"{method} has no parameter {key!r}; its parameters: {known}")
        checked[key] = check_type(key, value, getattr(default.params, key))
    if not checked:
        return default
    try:
        return get_method(method, **checked)
    except (TypeError, ValueError) as err:
        raise ValueError(f"bad parameters for {method}: {err}") from None


def check_type(key: str, value: Any, default: Any) -> Any:
    """``value`` as the type of the parameter's default ``default`` (None: any value)."""
    if default is None:
        return value
    expected: type = type(default)
    if expected is float and type(value) is int:
        return float(value)
    if expected is tuple and type(value) is list:
        return tuple(value)
    if type(value) is not expected:
        name = expected.__name__
        article = "an" if name[0] in "aeiou" else "a"
        raise ValueError(
            f"parameter {key} takes {article} {name} (default {default!r}); got {value!r}"
        )
    return value


def check_out(out: Path, replace: bool) -> None:
    """Refuse to write over an existing bundle (unless ``replace``) or a non-empty folder that
    is not a bundle."""
    if not out.exists():
        return
    is_bundle = (out / MANIFEST_FILE).is_file()
    if is_bundle and not replace:
        raise GenerationError(
            f"{out} already holds a bundle; replace it explicitly or choose a new folder"
        )
    if not is_bundle and (out.is_file() or any(out.iterdir())):
        raise GenerationError(f"{out} exists and is not a fingerprint bundle; choose a new folder")


def make_bundle(
    target: str | Path,
    method: str,
    n: int,
    out: str | Path | None,
    *,
    seed: int = 0,
    overrides: Mapping[str, Any] | None = None,
    root: str | Path | None = None,
    key: bytes | None = None,
    zoo: Mapping[str, Path] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    replace: bool = False,
    tolerance: Tolerance | str = DEFAULT_TOLERANCE,
) -> FingerprintSet:
    """Generate ``n`` fingerprints with ``method`` for the target record at ``target`` and save
    them to the bundle folder ``out`` (None: do not save).

    The generator runs on the target's ``source`` pool (pools cut with the record's data seed
    from the dataset, read from ``root`` for datasets on disk), with the ``test`` pool as the
    normal images and the owner's pools and record in its :class:`SearchContext`. The manifest
    records the target (id, dataset, architecture, data seed, number of classes, input
    contract), ``n`` and ``seed``; MiSentry adds its profile. ``overrides`` change single
    parameters of the method (checked by :func:`build_generator`); ``key`` signs the bundle;
    ``zoo`` names MiSentry zoo models built beforehand; ``progress(stage, done, total)`` follows
    the work; ``replace`` allows writing over an existing bundle; ``tolerance`` is how
    differently the owner may serve the target without a false alarm
    (:mod:`~misentry.fingerprint.tolerance`; default ``tf32``: any float32 stack).

    Raises:
        ValueError: ``n`` below 1, an unknown tolerance, or bad ``overrides`` (see
            :func:`build_generator`).
        KeyError: an unknown method.
        RecordError: the target record is missing or damaged.
        GenerationError: ``out`` holds something else, the record is not a target, or the
            method cannot make the fingerprints asked for.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    generator = build_generator(method, overrides)
    if out is not None:
        check_out(Path(out), replace)
    model, record = load_model(target)
    return generate_bundle(
        model, record, generator, n, out, seed=seed, root=root, key=key, zoo=zoo,
        progress=progress, replace=replace, tolerance=tolerance,
    )  # fmt: skip


def generate_bundle(
    model: nn.Module,
    record: Record,
    generator: Generator,
    n: int,
    out: str | Path | None,
    *,
    seed: int = 0,
    root: str | Path | None = None,
    key: bytes | None = None,
    zoo: Mapping[str, Path] | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    replace: bool = False,
    extra: Mapping[str, Any] | None = None,
    tolerance: Tolerance | str = DEFAULT_TOLERANCE,
) -> FingerprintSet:
    """:func:`make_bundle` for a target already in memory: ``model`` and its ``record`` (not
    saved, e.g. one :func:`~misentry.fingerprint.protection.protect` built); ``extra`` entries are
    added to the manifest."""
    if n < 1:
        raise ValueError("n must be at least 1")
    level = Tolerance.parse(tolerance)
    folder = None if out is None else Path(out)
    if folder is not None:
        check_out(folder, replace)
    if record.kind != "target":
        raise GenerationError(
            f"record {record.record_id[:16]} is a {record.kind!r} record, not a target; "
            "fingerprints are generated for the model the owner trained"
        )
    if progress is not None:
        progress("pools", 0, 1)
    pools = get_dataset(record.dataset).pools(record.data_seed, root)
    if progress is not None:
        progress("pools", 1, 1)
    manifest: dict[str, Any] = {
        "target_id": record.record_id,
        "dataset": record.dataset,
        "architecture": record.architecture,
        "data_seed": record.data_seed,
        "num_classes": (record.input or {}).get("num_classes"),
        CONTRACT_KEY: model_contract(model).to_json(),
        "n": n,
        "seed": seed,
        **(extra or {}),
    }
    normal = pools["test"].x
    context = SearchContext(
        normal=normal, pools=pools, record=record, progress=progress, zoo=zoo, tolerance=level
    )
    fps = generator.generate(model, pools["source"], n, seed, normal, manifest, context)
    if folder is not None:
        save_bundle(fps, folder, key=key)
    return fps
