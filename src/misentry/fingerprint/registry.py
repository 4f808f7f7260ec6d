"""The registry of fingerprint generators, by method name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from misentry.fingerprint.base import Generator
from misentry.fingerprint.methods.ibsf import Ibsf, IbsfParams
from misentry.fingerprint.methods.misentry import Misentry
from misentry.fingerprint.methods.natural import Natural, NaturalParams, Noise, NoiseParams
from misentry.fingerprint.methods.publiccheck import PublicCheck, PublicCheckParams
from misentry.fingerprint.methods.ssf import Ssf, SsfParams
from misentry.fingerprint.methods.ssf_bo import SsfBo, SsfBoParams

METHODS: dict[str, Callable[[], Generator]] = {
    "natural": lambda: Natural(NaturalParams()),
    "noise": lambda: Noise(NoiseParams()),
    "ibsf": lambda: Ibsf(IbsfParams()),
    "ssf": lambda: Ssf(SsfParams()),
    "publiccheck": lambda: PublicCheck(PublicCheckParams()),
    "ssf_bo": lambda: SsfBo(SsfBoParams()),
    "misentry": lambda: Misentry.profile("strict"),
    "misentry-covert": lambda: Misentry.profile("covert"),
}
"""Method name -> a generator with its default parameters."""


def get_method(name: str, **params: Any) -> Generator:
    """The generator ``name`` with its defaults, or with ``params`` overriding them."""
    try:
        default = METHODS[name]()
    except KeyError:
        raise KeyError(f"unknown method {name!r}; methods: {', '.join(METHODS)}") from None
    if not params:
        return default
    if isinstance(default, Misentry):  # a profile's values stay unless overridden
        return Misentry.profile("covert" if name.endswith("covert") else "strict", **params)
    return type(default)(type(default.params)(**params))
