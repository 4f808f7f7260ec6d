"""``misentry serve``, run through :func:`misentry.cli.main`: its defaults, the URL it prints,
the app it serves, the warning off loopback, and the arguments it refuses. ``uvicorn.run`` is
replaced by a stub that records what it was asked to serve, so no test blocks on a port."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("fastapi", reason="misentry serve needs the serve extra (fastapi, uvicorn)")
pytest.importorskip("uvicorn", reason="misentry serve needs the serve extra (fastapi, uvicorn)")

from loopback_http import call
from misentry import cli
from misentry.models import build_model, input_spec, load_model, model_record, predict, save_record
from misentry.serve import default_model_name, serve_in_thread
from serve.oipkit import infer, labels_of, request_body


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained LeNet-5 digits record: the CLI only needs a loadable model."""
    spec = input_spec("digits")
    model = build_model("lenet5", spec, 0)
    record = model_record(
        model,
        kind="target",
        dataset="digits",
        architecture="lenet5",
        spec=spec,
        data_seed=0,
        model_seed=0,
        params={"note": "untrained, for the serve tests"},
    )
    return save_record(record, tmp_path_factory.mktemp("serve") / "target")


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, str, int]]:
    """(app, host, port) of every ``uvicorn.run`` that ``misentry serve`` asked for."""
    calls: list[tuple[Any, str, int]] = []

    def run(app: Any, *, host: str, port: int, **_: Any) -> None:
        calls.append((app, host, port))

    monkeypatch.setattr("uvicorn.run", run)
    return calls


def test_serve_defaults_to_loopback_port_8080_labels_only(
    record_dir: Path, served: list[tuple[Any, str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--model", str(record_dir)]) == 0
    out = capsys.readouterr().out
    ((app, host, port),) = served  # the serve verb ran, and handed its app over once
    assert (host, port) == ("127.0.0.1", 8080)
    name = default_model_name(load_model(record_dir)[1])
    assert f"/v2/models/{name}" in out
    with serve_in_thread(app) as url:
        meta = call(f"{url}/v2/models/{name}")[1]
    assert [o["name"] for o in meta["outputs"]] == ["label"]  # no scores unless --scores


def test_serve_prints_the_model_url_and_serves_the_record(
    record_dir: Path,
    served: list[tuple[Any, str, int]],
    images: torch.Tensor,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["serve", "--model", str(record_dir)]) == 0
    out, err = capsys.readouterr()
    model, record = load_model(record_dir)
    name = default_model_name(record)
    assert name == f"digits-{record.record_id[:16]}"
    assert f"http://127.0.0.1:8080/v2/models/{name}" in out
    assert "warning" not in err
    ((app, host, port),) = served
    assert (host, port) == ("127.0.0.1", 8080)
    with serve_in_thread(app) as url:  # the app handed to uvicorn serves the record
        status, answer, _ = infer(url, request_body(images), name=name)
    assert status == 200
    assert labels_of(answer) == predict(model, images).tolist()


def test_serve_warns_in_yellow_off_loopback(
    record_dir: Path, served: list[tuple[Any, str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "--model", str(record_dir), "--host", "0.0.0.0", "--port", "9000"]
    argv += ["--name", "lenet", "--scores"]
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert [(host, port) for _, host, port in served] == [("0.0.0.0", 9000)]
    assert "http://0.0.0.0:9000/v2/models/lenet" in out
    assert "warning" in err
    assert "not on loopback" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["serve"],
        ["serve", "--model", "x", "--port", "0"],
        ["serve", "--model", "x", "--port", "70000"],
        ["serve", "--model", "x", "--name", "a/b"],
        ["serve", "--model", "x", "--name", "-lead"],
    ],
)
def test_serve_rejects_bad_arguments(
    argv: list[str], served: list[tuple[Any, str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert served == []
    capsys.readouterr()


def test_serve_of_a_missing_record_is_a_record_error(
    tmp_path: Path, served: list[tuple[Any, str, int]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--model", str(tmp_path / "none")]) == 1
    assert "not a misentry record folder" in capsys.readouterr().err
    assert served == []


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True),
     ("[::1]", True), ("0.0.0.0", False), ("::", False), ("192.168.1.5", False),
     ("example.org", False)],
)  # fmt: skip
def test_only_a_loopback_host_serves_without_a_warning(
    host: str,
    loopback: bool,
    record_dir: Path,
    served: list[tuple[Any, str, int]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["serve", "--model", str(record_dir), "--host", host]) == 0
    err = capsys.readouterr().err
    assert ("not on loopback" not in err) is loopback
    assert [h for _, h, _ in served] == [host]
