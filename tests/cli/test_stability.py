"""``misentry stability``: the table and its one-line summary, exit 0 stable, 1 a label changed
within the tolerance, 2 a real stack unchecked or a check that cannot start."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from misentry.cli import main
from misentry.data import Pools
from misentry.fingerprint.bundle import save_bundle
from misentry.models.stacks import ALL_STACKS, LEVELS
from verify.test_stability import make_bundle, near_tie_images, top_margins

from .clikit import Cli

N = 12


@pytest.fixture(scope="module")
def bundles(
    target: nn.Module, digits_pools: Pools, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Near ties declared bf16 (a false promise), natural images declared tf32 and exact."""
    root = tmp_path_factory.mktemp("stability")
    images = digits_pools["source"].images
    ties = near_tie_images(target, images, N)
    natural = images[top_margins(target, images) > 2.0][:N]
    made = {
        "ties-bf16": make_bundle(target, ties, "bf16"),
        "natural-tf32": make_bundle(target, natural, "tf32"),
        "natural-exact": make_bundle(target, natural, "exact"),
    }
    return {name: save_bundle(bundle, root / name) for name, bundle in made.items()}


def within(tolerance: str) -> int:
    return sum(LEVELS.index(s.level) <= LEVELS.index(tolerance) for s in ALL_STACKS)


def test_a_broken_promise_exits_1_and_the_table_shows_where(
    cli: Cli, bundles: dict[str, Path], target_dir: Path
) -> None:
    code, out, err = cli(
        "stability", "--fingerprints", str(bundles["ties-bf16"]), "--target", str(target_dir)
    )
    assert code == 1
    assert re.search(rf"NOT stable within tolerance bf16: \d+ of {len(ALL_STACKS)} stacks", out)
    rows = re.findall(r"│ (bf16\S*) +│ bf16 +│ yes +│ +(\d+) / (\d+) │", out)
    assert [name for name, _, _ in rows] == ["bf16", "bf16-autocast", "bf16-stochastic"]
    assert sum(int(changed) for _, changed, _ in rows) > 0
    assert {total for _, _, total in rows} == {str(N)}
    assert f"emulated: {len(ALL_STACKS)}/{len(ALL_STACKS)}" in err  # progress, one line a stage


def test_stable_natural_images_with_onnx_runtime_exit_0(
    cli: Cli, bundles: dict[str, Path], target_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    onnx = tmp_path / "target.onnx"
    code, _, _ = cli("export", "--model", str(target_dir), "--onnx", str(onnx), "--check", "0")
    assert code == 0
    argv = ["--fingerprints", str(bundles["natural-tf32"]), "--target", str(target_dir)]
    code, out, _ = cli("stability", *argv, "--onnx", str(onnx))
    assert code == 0
    assert f"stable within tolerance tf32: 0 label changes on {within('tf32') + 4} stacks" in out
    assert len(re.findall(rf"│ onnxruntime-\S+ +│ fp32 +│ yes +│ +0 / {N} │", out)) == 4


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_endpoint_that_does_not_answer_exits_2(
    cli: Cli, bundles: dict[str, Path], target_dir: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}/v2/models/digits"
    argv = ["--fingerprints", str(bundles["natural-exact"]), "--target", str(target_dir)]
    code, out, _ = cli("stability", *argv, "--endpoint", url, "--json")
    data = json.loads(out)
    assert code == data["exit"] == 2
    assert data["ok"] is False
    assert data["errors"] == ["endpoint"]
    assert data["failed"] == []
    endpoint = data["rows"][-1]
    assert endpoint["kind"] == "endpoint"
    assert endpoint["level"] == "exact"
    assert endpoint["error"].startswith("transport")
    assert data["checked"] == within("exact")


def test_another_target_is_refused_with_exit_2(
    cli: Cli, bundles: dict[str, Path], files: dict[str, Path]
) -> None:
    argv = ["--fingerprints", str(bundles["natural-exact"]), "--target", str(files["tampered"])]
    code, out, err = cli("stability", *argv)
    assert code == 2
    assert out == ""
    assert "not those the fingerprints were made for" in " ".join(err.split())
    code, out, _ = cli("stability", *argv, "--json")
    assert code == json.loads(out)["exit"] == 2


def test_a_bad_bundle_target_or_key_exits_2(
    cli: Cli, bundles: dict[str, Path], target_dir: Path, tmp_path: Path, target: nn.Module
) -> None:
    missing = ["--fingerprints", str(tmp_path / "none"), "--target", str(target_dir)]
    assert cli("stability", *missing)[0] == 2
    no_record = ["--fingerprints", str(bundles["natural-exact"]), "--target", str(tmp_path)]
    code, _, err = cli("stability", *no_record)
    assert code == 2
    assert "--target" in err
    code, _, err = cli("stability", *no_record, "--onnx", str(tmp_path / "none.onnx"))
    assert code == 2
    assert "--onnx: no file" in err
    signed = save_bundle(
        make_bundle(target, torch.zeros(2, 1, 8, 8).byte(), None), tmp_path / "s", b"k"
    )
    (tmp_path / "key").write_text("another key")
    argv = ["--fingerprints", str(signed), "--target", str(target_dir)]
    code, _, err = cli("stability", *argv, "--key-file", str(tmp_path / "key"))
    assert code == 2
    assert "--fingerprints" in err


def test_help_explains_the_matrix_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["stability", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    for text in (*LEVELS, "exit status", "examples:", "--onnx", "--endpoint", "--key-file"):
        assert text in out
