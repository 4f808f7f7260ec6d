"""``misentry record``."""

from __future__ import annotations

import json
from pathlib import Path

from misentry.models import Record, save_record

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
