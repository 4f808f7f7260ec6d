"""`misentry fingerprint`, run in-process as a user would type it, and the PNG sheets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from misentry.cli import main
from misentry.data import ImageSet, Pools
from misentry.fingerprint.bundle import (
    KEY_ENV,
    BundleError,
    FingerprintSet,
    load_bundle,
    load_key,
)
from misentry.fingerprint.export import MIN_SIDE, export_png
from misentry.fingerprint.methods.misentry import Profile
from misentry.fingerprint.registry import METHODS
from misentry.models import Record, predict

CHEAP: dict[str, tuple[str, ...]] = {
    "ibsf": ("--set", "steps=20"),
    "ssf": ("--set", "steps=20"),
    "publiccheck": ("--set", "ae_epochs=20"),
    "ssf_bo": ("--set", "ae_epochs=5", "--set", "iterations=5", "--set", "candidates=64"),
    "misentry": (
        "--set",
        "steps=4",
        "--set",
        "refine_rounds=5",
        "--set",
        "zoo_replicates=1",
        "--set",
        "screening_replicates=1",
        "--set",
        "pool_factor=2",
        "--set",
        'zoo=["ft_last:1e-4x1","ft_all:1e-4x1"]',
    ),
}
"""Overrides that make a method fast enough for a unit test (misentry-covert as misentry)."""


def cheap(method: str) -> tuple[str, ...]:
    return CHEAP.get(method.removesuffix("-covert"), ())


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


@pytest.fixture(scope="module")
def sources(digits_pools: Pools) -> ImageSet:
    return digits_pools["source"]


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_writes_a_bundle_with_the_targets_labels(
    method: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    target_dir: Path,
    target: nn.Module,
    record: Record,
) -> None:
    out = tmp_path / "fp"
    argv = ("fingerprint", "--method", method, "--target", str(target_dir), "--n", "8")
    code, stdout, err = run(capsys, *argv, "--out", str(out), *cheap(method), "--json")
    assert code == 0, err
    fps = load_bundle(out)
    assert len(fps) == 8
    assert torch.equal(fps.labels, predict(target, fps.x))
    assert fps.manifest["method"] == method.removesuffix("-covert")  # covert is a profile
    assert fps.manifest["target_id"] == record.record_id
    assert (fps.manifest["dataset"], fps.manifest["n"], fps.manifest["seed"]) == ("digits", 8, 0)
    summary = json.loads(stdout)
    assert summary["n"] == 8
    assert summary["distinct_labels"] == len(set(fps.labels.tolist()))
    assert summary["path"] == str(out)
    assert summary["signed"] is False


def test_natural_fingerprints_are_the_sources_and_a_bundle_is_not_overwritten(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, target_dir: Path, sources: ImageSet
) -> None:
    out = tmp_path / "fp"
    argv = ("fingerprint", "--method", "natural", "--target", str(target_dir), "--n", "8")
    code, stdout, _ = run(capsys, *argv, "--out", str(out))
    assert code == 0
    assert "natural" in stdout
    assert "8 (" in stdout  # fingerprints: 8 (k distinct labels)
    fps = load_bundle(out)
    assert torch.equal(fps.images, sources.images[fps.source_indices])

    code, _, err = run(capsys, *argv, "--out", str(out))
    assert code == 1
    assert "--force" in err
    assert run(capsys, *argv, "--out", str(out), "--seed", "1", "--force")[0] == 0
    assert load_bundle(out).manifest["seed"] == 1

    code, _, err = run(capsys, *argv, "--out", str(tmp_path))
    assert code == 1
    assert "not a fingerprint bundle" in err


@pytest.mark.parametrize("profile", ["strict", "covert"])
def test_misentry_profiles_reach_the_manifest(
    profile: str, capsys: pytest.CaptureFixture[str], tmp_path: Path, target_dir: Path
) -> None:
    out = tmp_path / "fp"
    argv = ("fingerprint", "--method", "misentry", "--target", str(target_dir), "--n", "8")
    chosen = () if profile == "strict" else ("--profile", profile)
    code, stdout, err = run(capsys, *argv, "--out", str(out), *chosen, *cheap("misentry"), "--json")
    assert code == 0, err
    manifest = load_bundle(out).manifest
    assert manifest["profile"] == profile
    assert manifest["params"]["covertness"] == (0.0 if profile == "strict" else 1.0)
    assert manifest["params"]["steps"] == 4
    assert manifest["params"]["zoo"] == ["ft_last:1e-4x1", "ft_all:1e-4x1"]
    summary = json.loads(stdout)
    assert summary["profile"] == profile
    assert summary["screening"] == manifest["screening"]
    assert summary["max_linf"] <= 32 / 255 + 1e-6


def test_norm_eps_and_key_file_reach_the_bundle(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, target_dir: Path
) -> None:
    out, key_file = tmp_path / "fp", tmp_path / "owner.key"
    key_file.write_text("a secret key\n")
    argv = ("fingerprint", "--method", "noise", "--target", str(target_dir), "--n", "8")
    code, _, err = run(
        capsys, *argv, "--out", str(out), "--eps", "4/255", "--key-file", str(key_file)
    )
    assert code == 0, err
    fps = load_bundle(out, key=load_key(key_file))
    assert fps.manifest["params"]["eps"] == pytest.approx(4 / 255)
    assert all(row["linf"] <= 4.5 / 255 + 1e-6 for row in fps.manifest["samples"])
    with pytest.raises(BundleError, match="signed"):
        load_bundle(out)


def test_export_png_writes_one_sheet_per_fingerprint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, target_dir: Path, sources: ImageSet
) -> None:
    out, sheets = tmp_path / "fp", tmp_path / "png"
    argv = ("fingerprint", "--method", "noise", "--target", str(target_dir), "--n", "4")
    code, _, err = run(capsys, *argv, "--out", str(out), "--export-png", str(sheets))
    assert code == 0, err
    fps = load_bundle(out)
    paths = sorted(sheets.glob("*.png"))
    assert [p.name for p in paths] == [
        f"{i:04d}-label-{label}.png" for i, label in enumerate(fps.labels.tolist())
    ]
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            assert image.mode == "L"
            sheet = np.asarray(image)
        panels = split_sheet(sheet, 8)
        fp = fps.images[i, 0].numpy().astype(int)
        src = sources.images[int(fps.source_indices[i]), 0].numpy().astype(int)
        assert sheet.shape[0] >= MIN_SIDE
        assert 3 * sheet.shape[0] < sheet.shape[1] <= 3.5 * sheet.shape[0]
        assert np.array_equal(panels[0], src)
        assert np.array_equal(panels[1], fp)
        assert np.array_equal(panels[2], np.clip(128 + 10 * (fp - src), 0, 255))


def test_export_png_draws_colour_images_and_blanks_a_missing_source(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    src = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=gen)
    fps = FingerprintSet(
        images=(src.int() + 3).clamp(0, 255).to(torch.uint8),
        labels=torch.tensor([4, 7]),
        source_indices=torch.tensor([1, -1]),
    )
    paths = export_png(fps, ImageSet(src.flip(0), torch.zeros(2, dtype=torch.int64)), tmp_path, 2)
    assert [p.name for p in paths] == ["0000-label-4.png", "0001-label-7.png"]
    with Image.open(paths[0]) as first, Image.open(paths[1]) as second:
        assert first.mode == second.mode == "RGB"
        with_source, without = np.asarray(first), np.asarray(second)
    assert with_source.shape[0] == 128  # 32 px enlarged 4x to reach 112
    panels = split_sheet(with_source, 32)
    assert np.array_equal(panels[0], src[0].permute(1, 2, 0).numpy())
    expected = 128 + 2 * (fps.images[0].int() - src[0].int())
    assert np.array_equal(panels[2], expected.permute(1, 2, 0).numpy())
    blank = split_sheet(without, 32)
    assert not blank[0].any()
    assert not blank[2].any()
    assert np.array_equal(blank[1], fps.images[1].permute(1, 2, 0).numpy())


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        (("--method", "misentry", "--set", "nosuch=1"), "nosuch"),
        (("--method", "ibsf", "--profile", "covert"), "--profile"),
        (("--method", "misentry-covert", "--profile", "strict"), "--profile"),
        (("--method", "natural", "--eps", "0.1"), "no parameter 'eps'"),
        (("--method", "misentry", "--set", "steps=abc"), "steps takes an int (default"),
        (("--method", "misentry", "--set", "eps=-1"), "eps must be positive"),
        (("--method", "misentry", "--set", "steps"), "KEY=VALUE"),
        (("--method", "noise", "--eps", "0.1", "--set", "eps=0.2"), "given both"),
        (("--method", "nope"), "unknown method 'nope'"),
        (("--method", "natural", "--n", "1000"), "only 89 source images"),
    ],
)
def test_bad_input_is_a_clear_error(
    tail: tuple[str, ...],
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    target_dir: Path,
) -> None:
    argv = ("fingerprint", "--target", str(target_dir), "--out", str(tmp_path / "fp"), *tail)
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert message in " ".join(err.split())
    assert "Traceback" not in err
    assert not (tmp_path / "fp").exists()


def split_sheet(sheet: np.ndarray, side: int) -> list[np.ndarray]:
    """The three panels of a sheet, sampled back to ``side`` x ``side`` pixels."""
    scale = sheet.shape[0] // side
    small = sheet[::scale, ::scale]
    return [small[:, k * (side + 1) : k * (side + 1) + side] for k in range(3)]


def test_help_explains_methods_profiles_and_the_bundle(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fingerprint", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0
    for word in (*METHODS, "strict", "covert", "three decision boundaries", "bundle folder"):
        assert word in out
    assert "misentry fingerprint --method" in out  # the examples
    assert "{" + ",".join(profile.value for profile in Profile) + "}" in out  # --profile choices
