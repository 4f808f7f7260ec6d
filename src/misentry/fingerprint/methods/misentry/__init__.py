"""MiSentry: fingerprints where the target's decision boundaries meet, found against a zoo of
subtly tampered copies (see :class:`Misentry`), in stages: :mod:`.params` (parameters and
profiles), :mod:`.zoo`, :mod:`.window` (the margin window and normal bands), :mod:`.search`,
:mod:`.refine` (the 8-bit lattice refinement) and :mod:`.screening`."""

from misentry.fingerprint.methods.misentry.generator import Misentry
from misentry.fingerprint.methods.misentry.params import MisentryParams, Profile
from misentry.fingerprint.methods.misentry.screening import benign_stable
from misentry.fingerprint.methods.misentry.window import MarginWindow, inside_bands, normal_bands

__all__ = [
    "MarginWindow",
    "Misentry",
    "MisentryParams",
    "Profile",
    "benign_stable",
    "inside_bands",
    "normal_bands",
]
