"""What the command-line tests share besides fixtures."""

from __future__ import annotations

from collections.abc import Callable

Cli = Callable[..., tuple[int, str, str]]
"""The ``cli`` fixture: ``cli("data", "list")`` -> (exit status, stdout, stderr)."""

N = 16
"""Fingerprints in the ``fingerprints`` bundle."""
