"""What a command module needs to add its verb to the CLI without importing ``misentry.cli``
(which imports the command modules): the subparsers type and the signature of ``cli._verb``."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Protocol, TypeAlias

Verbs: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Handler: TypeAlias = Callable[[argparse.Namespace], int]


class MakeVerb(Protocol):
    """The signature of :func:`misentry.cli._verb`: add a subcommand parser with a handler and
    a description."""

    def __call__(
        self,
        verbs: Verbs,
        name: str,
        help_text: str,
        handler: Handler | None = None,
        description: str | None = None,
    ) -> argparse.ArgumentParser: ...
