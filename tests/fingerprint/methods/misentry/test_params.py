"""MiSentry's parameters check themselves; the profile is one typed value from the method name
to the parameters and the manifest."""

from __future__ import annotations

import math

import pytest

from misentry.fingerprint.methods.misentry import Misentry, MisentryParams, Profile
from misentry.fingerprint.registry import METHODS, get_method


def test_parameters_are_checked() -> None:
    for bad in (
        {"covertness": 1.5},
        {"tie_classes": 1},
        {"floor": 1e-3, "ceiling": 1e-4},
        {"norm": "l1"},
        {"zoo": ("ft_middle",)},
        {"zoo": ("ft_last:abc",)},
    ):
        with pytest.raises(ValueError, match=r"MisentryParams|zoo member"):
            MisentryParams(**bad)
    with pytest.raises(KeyError, match="unknown profile 'loud'; profiles: strict, covert"):
        Misentry.profile("loud")


def test_the_profiles_set_the_covertness() -> None:
    strict = MisentryParams()
    assert math.isclose(strict.floor, 2e-5)
    assert strict.covertness == 0.0
    assert Misentry.profile("covert").params.covertness == 1.0
    assert Misentry(MisentryParams(covertness=0.5)).profile_name == "covertness=0.5"


@pytest.mark.parametrize("profile", list(Profile))
def test_a_profile_is_one_value_from_method_name_to_parameters(profile: Profile) -> None:
    assert Profile.of_method(profile.method) is profile
    assert Profile(profile.value) is profile
    generator = Misentry.profile(profile)
    assert generator.params == Misentry.profile(profile.value).params
    assert generator.params.covertness == profile.covertness
    assert generator.params.tie_classes == profile.tie_classes
    assert generator.profile_name == profile.value
    # the registry holds one entry per profile; overrides keep the profile's values
    assert METHODS[profile.method]().params == generator.params
    tuned = get_method(profile.method, steps=7)
    assert isinstance(tuned, Misentry)
    assert tuned.params == Misentry.profile(profile, steps=7).params
    assert tuned.params.covertness == profile.covertness


def test_the_profiles_and_their_method_names() -> None:
    assert [p.value for p in Profile] == ["strict", "covert"]
    assert [p.method for p in Profile] == ["misentry", "misentry-covert"]
    assert (Profile.STRICT.covertness, Profile.COVERT.covertness) == (0.0, 1.0)
    assert Profile.of_method("ssf") is None
    assert Profile.of_method("misentry-strict") is None
    assert Profile.COVERT == "covert"  # a str: JSON and argparse take it as it is
