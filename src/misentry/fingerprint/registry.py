"""The registry of fingerprint generators, by method name."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from misentry.fingerprint.base import Generator
from misentry.fingerprint.methods.ibsf import Ibsf, IbsfParams
from misentry.fingerprint.methods.misentry import Misentry, Profile
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
    **{profile.method: partial(Misentry.profile, profile) for profile in Profile},
}
"""Method name -> a generator with its default parameters (MiSentry once per :class:`Profile`:
``misentry`` and ``misentry-covert``)."""


def get_method(name: str, **params: Any) -> Generator:
    """The generator ``name`` with its defaults, or with ``params`` overriding them (a
    MiSentry profile's values stay unless overridden)."""
    try:
        default = METHODS[name]()
    except KeyError:
        raise KeyError(f"unknown method {name!r}; methods: {', '.join(METHODS)}") from None
    if not params:
        return default
    profile = Profile.of_method(name)
    if profile is not None:
        return Misentry.profile(profile, **params)
    return type(default)(type(default.params)(**params))
