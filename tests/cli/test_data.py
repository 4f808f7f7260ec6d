"""``misentry data``."""

from __future__ import annotations

from pathlib import Path

from misentry.data import DATASETS

from .clikit import Cli


def test_data_list_shows_every_dataset(cli: Cli) -> None:
    code, out, _ = cli("data", "list")
    assert code == 0
    for name in DATASETS:
        assert name in out


def test_data_show_prints_the_pool_sizes(cli: Cli) -> None:
    code, out, _ = cli("data", "show", "mnist5k")
    assert code == 0
    for pool, size in (("owner_train", "2500"), ("attacker", "1000"), ("source", "250")):
        line = next(row for row in out.splitlines() if pool in row)
        assert size in line


def test_data_show_of_a_folder_dataset_explains_the_layout(cli: Cli, tmp_path: Path) -> None:
    code, out, _ = cli("data", "show", "cifar10")
    assert code == 0
    assert "data_batch_1.bin" in out
    code, _, err = cli("data", "show", "cifar10", "--root", str(tmp_path))
    assert code == 1
    assert "data_batch_1.bin" in err


def test_data_alone_prints_its_subcommands(cli: Cli) -> None:
    code, out, _ = cli("data")
    assert code == 0
    assert "list" in out
    assert "show" in out


def test_data_list_names_the_patterns_of_your_own_images(cli: Cli) -> None:
    code, out, _ = cli("data", "list")
    assert code == 0
    assert "imagefolder:CxHxW" in out
    assert "csv:CxHxW" in out


def test_data_show_of_an_image_folder_prints_its_classes_and_pools(
    cli: Cli, tmp_path: Path
) -> None:
    import numpy as np
    from PIL import Image

    from misentry.data import min_class_size

    pixels = np.zeros((30, 40, 3), dtype=np.uint8)
    for name in ("zebra", "ant"):
        (tmp_path / name).mkdir()
        for i in range(min_class_size()):
            Image.fromarray(pixels + i).save(tmp_path / name / f"{i}.png")
    code, out, _ = cli("data", "show", "imagefolder:3x8x8", "--root", str(tmp_path))
    assert code == 0
    assert "0: ant, 1: zebra" in out
    line = next(row for row in out.splitlines() if "owner_train" in row)
    assert str(2 * (min_class_size() // 2)) in line
