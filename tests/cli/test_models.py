"""``misentry models``."""

from __future__ import annotations

from misentry.models import ARCHITECTURES

from .clikit import Cli


def test_models_list_shows_every_architecture(cli: Cli) -> None:
    code, out, _ = cli("models", "list")
    assert code == 0
    for name in ARCHITECTURES:
        assert name in out
    assert "44,426" in out  # LeNet-5 on 28x28
