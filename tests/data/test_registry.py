"""The dataset registry: what each dataset is, how it loads, and the errors that say what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from misentry.data import DATASETS, DatasetLayoutError, ImageSet, get_dataset

EMBEDDED = [name for name, info in DATASETS.items() if not info.needs_root]

ON_DISK = [name for name, info in DATASETS.items() if info.needs_root]


@pytest.mark.parametrize("name", EMBEDDED)
def test_embedded_dataset_is_in_unit_range_with_its_shape_and_classes(
    name: str, request: pytest.FixtureRequest
) -> None:
    info = get_dataset(name)
    images: ImageSet = request.getfixturevalue(name.replace("-", "_"))
    x = images.x
    assert images.shape == info.input_shape
    assert x.dtype == torch.float32
    assert float(x.min()) == 0.0
    assert float(x.max()) == 1.0
    assert set(images.labels.tolist()) == set(range(info.num_classes))


@pytest.mark.parametrize("name", EMBEDDED)
def test_normalization_constants_match_the_data(name: str, request: pytest.FixtureRequest) -> None:
    info = get_dataset(name)
    x = request.getfixturevalue(name.replace("-", "_")).x.double()
    assert len(info.mean) == len(info.std) == info.input_shape[0]
    for channel in range(info.input_shape[0]):
        assert float(x[:, channel].mean()) == pytest.approx(info.mean[channel], abs=1e-3)
        assert float(x[:, channel].std()) == pytest.approx(info.std[channel], abs=1e-3)


@pytest.mark.parametrize("name", ON_DISK)
def test_on_disk_dataset_without_root_says_how_to_give_it(name: str) -> None:
    with pytest.raises(ValueError, match="--root") as err:
        get_dataset(name).load()
    assert get_dataset(name).layout.strip().splitlines()[0].strip() in str(err.value)


@pytest.mark.parametrize("name", ON_DISK)
def test_on_disk_dataset_with_an_empty_folder_names_the_layout(name: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DatasetLayoutError) as err:
        get_dataset(name).load(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_unknown_dataset_lists_the_known_ones_and_the_patterns() -> None:
    with pytest.raises(KeyError) as err:
        get_dataset("nope")
    for name in (*DATASETS, "imagefolder:CxHxW", "csv:CxHxW"):
        assert name in str(err.value)
    with pytest.raises(KeyError, match="imagefolder:CxHxW"):
        get_dataset("folder:3x32x32")


@pytest.mark.parametrize(
    ("name", "shape", "arch"),
    [
        ("imagefolder:3x32x32", (3, 32, 32), "resnet20"),
        ("imagefolder:1x28x28", (1, 28, 28), "lenet5"),
        ("csv:3x64x48", (3, 64, 48), "resnet20"),
        ("csv:1x1x1", (1, 1, 1), "resnet20"),
        ("csv:1x4x9", (1, 4, 9), "lenet5"),
    ],
)
def test_user_dataset_names_carry_their_shape(
    name: str, shape: tuple[int, int, int], arch: str
) -> None:
    info = get_dataset(name)
    assert info.name == name
    assert info.input_shape == shape
    assert info.needs_root
    assert info.num_classes == 0
    assert info.default_arch == arch
    assert len(info.mean) == len(info.std) == shape[0]
    assert get_dataset(name) is info
    assert name.split(":")[0] not in DATASETS


@pytest.mark.parametrize(
    "name",
    [
        "imagefolder:2x32x32",
        "imagefolder:abc",
        "imagefolder:3x32",
        "imagefolder:3x0x32",
        "csv:4x8x8",
        "csv:3x32x32x1",
        "imagefolder:03x32x32",
        "imagefolder:3X32X32",
        "imagefolder:",
        "csv:-3x8x8",
    ],
)
def test_unsupported_user_dataset_names_are_value_errors_naming_them(name: str) -> None:
    with pytest.raises(ValueError, match="dataset") as err:
        get_dataset(name)
    assert repr(name) in str(err.value)


@pytest.mark.parametrize("name", ["imagefolder:3x8x8", "csv:1x8x8"])
def test_user_dataset_without_root_says_how_to_give_it(name: str, tmp_path: Path) -> None:
    info = get_dataset(name)
    with pytest.raises(ValueError, match="--root"):
        info.load()
    with pytest.raises(DatasetLayoutError) as err:
        info.load(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(err.value)
