"""Fingerprints: the generator interface (:mod:`.base`), the methods (:mod:`.methods`, by name in
:mod:`.registry`), the bundle format and per-sample statistics, :mod:`.service`, the one way
to make and save a bundle, and :func:`protect` (:mod:`.protection`), one call from a live
``nn.Module`` to a saved bundle. ``protect`` loads on first use, so importing one module of this
package does not load every method."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from misentry.fingerprint.protection import protect

__all__ = ["protect"]


def __getattr__(name: str) -> Any:
    if name == "protect":
        from misentry.fingerprint.protection import protect

        return protect
    raise AttributeError(f"module 'misentry.fingerprint' has no attribute {name!r}")
