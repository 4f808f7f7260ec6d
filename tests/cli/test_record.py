"""``misentry record``."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

from misentry.models import Record, save_record
from misentry.models.record import sha256_file
from user_model.saved import CONTRACT_ARGS, SavedModel

from .clikit import Cli


def test_record_show_verifies_and_refuses_a_changed_record(
    cli: Cli, tmp_path: Path, digits_record: Record
) -> None:
    out_dir = save_record(digits_record, tmp_path / "target")
    code, out, _ = cli("record", "show", str(out_dir))
    assert code == 0
    assert "verified" in out
    code, out, _ = cli("record", "show", str(out_dir), "--json")
    assert code == 0
    assert json.loads(out)["id"] == digits_record.record_id
    weights = out_dir / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    code, _, err = cli("record", "show", str(out_dir))
    assert code == 1
    assert "weights.safetensors" in err
    assert "changed" in err


def flat(text: str) -> str:
    """What a table printed, without its borders and white space (a long value wraps)."""
    return re.sub(r"[\s│]", "", text)


def test_record_show_prints_where_an_imported_model_came_from(
    cli: Cli, tmp_path: Path, imported_record: Record, user_model: SavedModel
) -> None:
    manifest = imported_record.params["import"]
    named = replace(
        imported_record,
        params={**imported_record.params, "classes": [f"digit {i}" for i in range(10)]},
    )
    code, out, _ = cli("record", "show", str(save_record(named, tmp_path / "target")))
    assert code == 0
    text = flat(out)
    assert flat("imported yes: torchscript") in text
    assert flat(f"source file {user_model.torchscript.name}") in text
    assert manifest["source_sha256"] == sha256_file(user_model.torchscript)
    assert manifest["source_sha256"] in text
    assert flat("input contract values in 0-255, mean 77, std 96, (N, C, H, W)") in text
    assert flat("classes digit 0, digit 1") in text
    assert flat(f"test accuracy {imported_record.metrics['test_accuracy']:.2%}") in text


def test_record_show_names_the_factory_of_an_imported_module(
    cli: Cli, tmp_path: Path, user_model: SavedModel
) -> None:
    out_dir = tmp_path / "target"
    argv = ["import", "--module", user_model.factory, "--arg", "width=8"]
    argv += ["--weights", str(user_model.safetensors), *CONTRACT_ARGS]
    assert cli(*argv, "--dataset", "digits", "--out", str(out_dir))[0] == 0
    code, out, _ = cli("record", "show", str(out_dir))
    assert code == 0
    text = flat(out)
    assert flat("imported yes: module") in text
    assert flat("make_net(width=8)") in text
    assert flat(f"weights {user_model.safetensors.name}") in text
    assert flat("classes none named") in text
