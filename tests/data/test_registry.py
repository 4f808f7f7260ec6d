"""The dataset registry: what each dataset is, how it loads, and the errors that say what to do."""

from __future__ import annotations

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
    images: ImageSet = request.getfixturevalue(name)
    x = images.x
    assert images.shape == info.input_shape
    assert x.dtype == torch.float32
    assert float(x.min()) == 0.0
    assert float(x.max()) == 1.0
    assert set(images.labels.tolist()) == set(range(info.num_classes))


@pytest.mark.parametrize("name", EMBEDDED)
def test_normalization_constants_match_the_data(name: str, request: pytest.FixtureRequest) -> None:
    info = get_dataset(name)
    x = request.getfixturevalue(name).x
    assert float(x.mean()) == pytest.approx(info.mean[0], abs=2e-3)
    assert float(x.std()) == pytest.approx(info.std[0], abs=2e-3)


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


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="mnist5k"):
        get_dataset("nope")
