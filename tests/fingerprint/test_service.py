"""The bundle service: overrides parsed and type-checked once, and make_bundle equal to
generating directly."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from misentry.data import Pools
from misentry.fingerprint.base import GenerationError, SearchContext
from misentry.fingerprint.bundle import FingerprintSet, load_bundle
from misentry.fingerprint.methods.misentry import Misentry
from misentry.fingerprint.registry import get_method
from misentry.fingerprint.service import build_generator, make_bundle, parse_overrides
from misentry.fingerprint.tolerance import DEFAULT_TOLERANCE
from misentry.models import Record, model_from_record, save_record

CHEAP_ZOO = {"steps": 5, "refine_rounds": 10, "zoo": ("ft_last:1e-4x1",), "pool_factor": 2}


@pytest.fixture(scope="module")
def target_folder(digits_record: Record, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_record(digits_record, tmp_path_factory.mktemp("target") / "record")


def direct(
    record: Record, pools: Pools, method: str, n: int, seed: int, **params: Any
) -> FingerprintSet:
    """What generating without the service gives."""
    normal = pools["test"].x
    context = SearchContext(normal=normal, pools=pools, record=record, tolerance=DEFAULT_TOLERANCE)
    generator = get_method(method, **params)
    model = model_from_record(record)
    return generator.generate(model, pools["source"], n, seed, normal, None, context)


def assert_same(a: FingerprintSet, b: FingerprintSet) -> None:
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.source_indices, b.source_indices)
    assert a.manifest["samples"] == b.manifest["samples"]


@pytest.mark.parametrize(
    ("method", "overrides"),
    [("noise", {"eps": 4 / 255}), ("misentry-covert", CHEAP_ZOO)],
    ids=["noise", "misentry-covert"],
)
def test_a_bundle_is_what_generating_directly_gives(
    target_folder: Path,
    digits_record: Record,
    digits_pools: Pools,
    tmp_path: Path,
    method: str,
    overrides: dict[str, Any],
) -> None:
    stages: set[str] = set()
    out = tmp_path / "bundle"
    fps = make_bundle(
        target_folder,
        method,
        6,
        out,
        seed=2,
        overrides=overrides,
        progress=lambda stage, done, total: stages.add(stage),
    )
    assert_same(fps, direct(digits_record, digits_pools, method, 6, 2, **overrides))
    assert_same(load_bundle(out), fps)
    manifest = load_bundle(out).manifest
    assert manifest["target_id"] == digits_record.record_id
    assert manifest["dataset"] == "digits"
    assert manifest["architecture"] == digits_record.architecture
    assert (manifest["data_seed"], manifest["n"], manifest["seed"]) == (0, 6, 2)
    assert "statistics" in stages
    if method == "misentry-covert":
        assert manifest["profile"] == "covert"
        assert {"zoo", "search", "refine", "screen"} <= stages


def test_a_signed_bundle_and_no_bundle(
    target_folder: Path, tmp_path: Path, digits_record: Record
) -> None:
    fps = make_bundle(target_folder, "natural", 5, tmp_path / "signed", key=b"k" * 16)
    assert torch.equal(load_bundle(tmp_path / "signed", key=b"k" * 16).images, fps.images)
    unsaved = make_bundle(target_folder, "natural", 5, None)
    assert torch.equal(unsaved.images, fps.images)
    assert unsaved.manifest["target_id"] == digits_record.record_id


def test_an_existing_bundle_is_replaced_only_on_request(
    target_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bundle"
    make_bundle(target_folder, "natural", 5, out, seed=0)
    with pytest.raises(GenerationError, match="already holds a bundle"):
        make_bundle(target_folder, "natural", 5, out, seed=1)
    again = make_bundle(target_folder, "natural", 5, out, seed=1, replace=True)
    assert torch.equal(load_bundle(out).images, again.images)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(GenerationError, match="not a fingerprint bundle"):
        make_bundle(target_folder, "natural", 5, other, replace=True)
    assert (other / "notes.txt").read_text() == "mine"


def test_what_cannot_make_a_bundle_is_refused(
    target_folder: Path, digits_record: Record, tmp_path: Path
) -> None:
    with pytest.raises(KeyError, match="unknown method 'loud'; methods: natural"):
        make_bundle(target_folder, "loud", 5, None)
    with pytest.raises(ValueError, match="at least 1"):
        make_bundle(target_folder, "natural", 0, None)
    tampered = dataclasses.replace(digits_record, kind="tampered", parent=digits_record.record_id)
    folder = save_record(tampered, tmp_path / "tampered")
    with pytest.raises(GenerationError, match="'tampered' record, not a target"):
        make_bundle(folder, "natural", 5, None)


def test_overrides_are_checked_against_the_parameters() -> None:
    with pytest.raises(KeyError, match="methods: natural, noise"):
        build_generator("loud")
    with pytest.raises(ValueError, match=r"misentry has no parameter 'stpes'; .*\bsteps\b"):
        build_generator("misentry", {"stpes": 3})
    with pytest.raises(ValueError, match="natural has no parameter 'eps'; its parameters: none"):
        build_generator("natural", {"eps": 0.1})
    with pytest.raises(ValueError, match=r"steps takes an int \(default 60\); got '3'"):
        build_generator("misentry", {"steps": "3"})
    with pytest.raises(ValueError, match=r"meta_learning takes a bool \(default True\); got 1"):
        build_generator("misentry", {"meta_learning": 1})
    with pytest.raises(ValueError, match="bad parameters for misentry: MisentryParams: covert"):
        build_generator("misentry", {"covertness": 2.0})


def test_overrides_are_converted_where_the_type_allows() -> None:
    generator = build_generator("misentry-covert", {"eps": 1, "zoo": ["ft_last:1e-4x1"]})
    assert isinstance(generator, Misentry)
    assert type(generator.params.eps) is float
    assert generator.params.eps == 1.0
    assert generator.params.zoo == ("ft_last:1e-4x1",)
    assert generator.params.covertness == 1.0  # the profile's values stay
    assert build_generator("misentry", {"step_size": 0.01}).params.step_size == 0.01
    default = build_generator("ssf")
    assert default.params == get_method("ssf").params


def test_overrides_parse_from_key_value_strings() -> None:
    parsed = parse_overrides(["steps=30", 'zoo=["ft_last", "retrain_last"]', "norm=l2"])
    assert parsed == {"steps": 30, "zoo": ("ft_last", "retrain_last"), "norm": "l2"}
    assert parse_overrides(["tie-classes=2", " eps =0.5"]) == {"tie_classes": 2, "eps": 0.5}
    assert parse_overrides(["meta_learning=false", "step_size=null"]) == {
        "meta_learning": False,
        "step_size": None,
    }
    assert parse_overrides([]) == {}
    for bad, words in (
        (["steps"], "'steps': expected KEY=VALUE"),
        (["=3"], "'=3': expected KEY=VALUE"),
        (["steps=1", "steps=2"], "steps is given twice"),
        (["tie-classes=1", "tie_classes=2"], "tie_classes is given twice"),
    ):
        with pytest.raises(ValueError, match=words):
            parse_overrides(bad)
