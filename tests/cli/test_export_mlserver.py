"""``misentry export --mlserver FOLDER``: a folder that MLServer's own ``mlserver start FOLDER``
serves, on loopback, answering as the record's model does. Skipped without the interop extra."""

from __future__ import annotations

import json
import socket
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from torch import nn

pytest.importorskip("mlserver", reason="MLServer comes with the interop extra")

from misentry.data import Pools
from misentry.models import predict
from misentry.serve.mlserver_runtime import run_mlserver
from misentry.verify.http import HttpOracle

from .clikit import Cli


def consecutive_free_ports(count: int = 3) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + count > 65535:
            continue
        with ExitStack() as stack:
            try:
                for port in range(first, first + count):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
            except OSError:
                continue
            return first
    raise RuntimeError("no consecutive free ports")


def test_mlserver_start_serves_the_exported_folder(
    cli: Cli, target_dir: Path, target: nn.Module, digits_pools: Pools, tmp_path: Path
) -> None:
    folder, port = tmp_path / "mlserver", consecutive_free_ports()
    code, out, err = cli(
        "export", "--model", str(target_dir), "--mlserver", str(folder),
        "--name", "digits", "--port", str(port), "--json",
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["url"] == f"http://127.0.0.1:{port}/v2/models/digits"
    settings = json.loads((folder / "settings.json").read_text())
    assert settings["host"] == "127.0.0.1"
    assert (settings["http_port"], settings["grpc_port"]) == (port, port + 1)
    model_settings = json.loads((folder / "model-settings.json").read_text())
    assert Path(model_settings["parameters"]["uri"]) == target_dir.resolve()
    command = [str(Path(sys.executable).parent / "mlserver"), "start", str(folder)]
    images = digits_pools["test"].images[:40]
    with run_mlserver(folder, "digits", timeout=90.0, command=command) as base:
        oracle = HttpOracle(f"{base}/v2/models/digits", num_classes=10, datatype="UINT8")
        labels = oracle.labels(images)
    assert labels.tolist() == predict(target, images.float() / 255).tolist()


def test_export_mlserver_refuses_what_it_cannot_write(
    cli: Cli, target_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    code, _, err = cli("export", "--model", str(target_dir), "--mlserver", str(tmp_path / "full"))
    assert code != 0
    assert "not empty" in err
    code, _, err = cli(
        "export", "--model", str(target_dir), "--mlserver", str(tmp_path / "m"), "--name", "a/b"
    )
    assert code != 0
    assert "--name" in err
    code, _, err = cli("export", "--model", str(tmp_path), "--mlserver", str(tmp_path / "m2"))
    assert code != 0
    assert "--model" in err
    with pytest.raises(SystemExit):  # neither --onnx nor --mlserver: argparse's usage error
        cli("export", "--model", str(target_dir))
