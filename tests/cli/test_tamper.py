"""``misentry tamper``."""

from __future__ import annotations

import json
from pathlib import Path

from misentry.models import load_record
from misentry.tamper.registry import VARIANTS

from .clikit import Cli


def test_tamper_list_shows_every_variant(cli: Cli) -> None:
    code, out, _ = cli("tamper", "list", "--json")
    assert code == 0
    rows = json.loads(out)
    assert [row["slug"] for row in rows] == list(VARIANTS)
    assert {row["kind"] for row in rows} == {"benign", "malicious"}
    code, out, _ = cli("tamper", "list")
    assert code == 0
    assert "ft_last_lr1e-5" in out


def test_tamper_build_builds_resumes_and_refuses_bad_input(
    cli: Cli, tmp_path: Path, target_dir: Path
) -> None:
    out_dir = tmp_path / "bench"
    args = ("tamper", "build", "--target", str(target_dir), "--out", str(out_dir), "--json")
    code, out, _ = cli(*args, "--variant", "identity,ft_all_lr1e-3", "--instances", "2")
    assert code == 0
    summary = {row["variant"]: row for row in json.loads(out)}
    assert summary["identity"]["built"] == 2
    assert summary["identity"]["observable"] == 0
    assert summary["ft_all_lr1e-3"]["observable"] == 2
    for index in (0, 1):
        assert load_record(out_dir / "ft_all_lr1e-3" / f"{index:04d}").kind == "tampered"

    code, out, _ = cli(*args, "--variant", "identity,ft_all_lr1e-3", "--instances", "2")
    assert code == 0
    assert all(row["skipped"] == 2 for row in json.loads(out))

    code, _, err = cli(*args, "--variant", "nope")
    assert code == 1
    assert "valid variants" in err
    code, _, err = cli(
        "tamper",
        "build",
        "--target",
        str(out_dir / "identity" / "0000"),
        "--out",
        str(tmp_path / "x"),
    )
    assert code == 1
    assert "not a target" in err
