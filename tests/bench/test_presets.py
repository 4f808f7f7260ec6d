"""The presets: every one names registered methods and variants, folder presets ask for their
folder, and a preset refuses what cannot run."""

from __future__ import annotations

from pathlib import Path

import pytest

from misentry.bench.presets import (
    CHEAP_ZOO,
    EXPERIMENTS,
    PRESETS,
    LeakageSpec,
    Preset,
    get_preset,
)
from misentry.bench.runner import resolve, run_bench
from misentry.data import get_dataset
from misentry.fingerprint.registry import METHODS
from misentry.tamper.registry import select


@pytest.mark.parametrize(
    "name", [n for n, p in PRESETS.items() if get_dataset(p.dataset).needs_root]
)
def test_folder_presets_fail_clearly_without_a_data_dir(name: str, tmp_path: Path) -> None:
    preset = get_preset(name)
    with pytest.raises(
        ValueError, match=rf"preset {name} reads {preset.data_label} from --data-dir; none given"
    ):
        run_bench(preset, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing started


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_names_registered_methods_and_variants(name: str) -> None:
    preset = PRESETS[name]
    assert set(preset.methods) <= set(METHODS)
    assert select(preset.variant_spec)
    assert preset.target_config.architecture
    assert max(preset.ns) <= preset.n_fingerprints
    if get_dataset(preset.dataset).input_shape[0] != 1:
        assert "ssf_bo" not in preset.methods  # its autoencoder takes 1-channel images only


def test_mnist5k_preset_runs_every_method_and_variant() -> None:
    preset = PRESETS["mnist5k"]
    assert preset.methods == tuple(METHODS)
    assert len(select(preset.variant_spec)) == len(select("all"))
    assert (preset.instances, preset.n_fingerprints, preset.ns) == (10, 100, (1, 5))


def test_a_preset_refuses_unknown_methods_and_impossible_ns() -> None:
    with pytest.raises(ValueError, match="unknown methods"):
        Preset(name="bad", dataset="digits", methods=("nope",))
    with pytest.raises(ValueError, match="N_S"):
        Preset(name="bad", dataset="digits", n_fingerprints=5, ns=(10,))
    with pytest.raises(KeyError, match="digits-smoke"):
        get_preset("nope")
    with pytest.raises(ValueError, match="unknown experiments"):
        Preset(name="bad", dataset="digits", experiments=("nope",))
    with pytest.raises(ValueError, match="n_leaked"):
        Preset(name="bad", dataset="digits", n_fingerprints=10, leakage=LeakageSpec(n_leaked=(10,)))


def test_resolve_merges_overrides_parameter_by_parameter_and_checks_the_band() -> None:
    smoke = PRESETS["digits-smoke"]
    resolved = resolve(smoke, overrides={"misentry": {"steps": 3}, "ssf": {"eps": 0.1}})
    assert resolved.method_overrides["misentry"] == {**CHEAP_ZOO, "steps": 3}
    assert resolved.method_overrides["ssf"] == {"eps": 0.1}
    assert resolve(smoke, band="covert").band == "covert"
    assert resolve(smoke) is smoke
    with pytest.raises(ValueError, match="unknown band 'loud'; bands: none, covert"):
        resolve(smoke, band="loud")


def test_a_preset_runs_its_experiments_in_report_order_with_its_settings() -> None:
    smoke = PRESETS["digits-smoke"]
    assert [spec.name for spec in smoke.specs] == list(EXPERIMENTS)
    assert smoke.specs[1] is smoke.leakage
    alone = [spec.name for spec in resolve(smoke, experiments=("frontier",)).specs]
    assert alone == ["detection", "covertness", "cost", "frontier"]
