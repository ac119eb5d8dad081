"""``train.size_classes``: experiments' Dice by structure volume."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from fastsam3d.errors import InputError
from fastsam3d.train.size_classes import (
    class_names,
    dice_by_size,
    main,
    runs_in_order,
    size_table,
)


def _rows(dice_by_ml: dict[float, float], click: int = 5) -> list[dict[str, str]]:
    rows = []
    for i, (ml, d) in enumerate(dice_by_ml.items()):
        for k, value in ((1, 0.0), (click, d)):
            rows.append(
                {"structure": f"s{i}", "click": str(k), "dice": str(value), "gt_mm3": str(ml * 1e3)}
            )
    return rows


def _write_run(root: Path, name: str, rows: list[dict[str, str]]) -> None:
    (root / name).mkdir(parents=True)
    with (root / name / "held-out.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_classes_split_at_the_bounds_and_average_one_click_count() -> None:
    rows = _rows({2.0: 0.2, 9.9: 0.4, 10.0: 0.6, 49.0: 0.8, 700.0: 0.9})
    result = dice_by_size(rows, "r", click=5, bounds=(10.0, 50.0))
    assert result.counts == (2, 2, 1)
    assert result.means == pytest.approx((0.3, 0.7, 0.9))
    # click 1 is a different column of the same rows
    assert dice_by_size(rows, "r", click=1).means == pytest.approx((0.0, 0.0, 0.0))
    empty = dice_by_size(_rows({2.0: 0.5}), "r", click=5)
    assert empty.counts == (1, 0, 0)
    assert math.isnan(empty.means[1])
    assert class_names((10.0, 50.0)) == ["< 10 mL", "10-50 mL", ">= 50 mL"]


def test_bad_bounds_and_missing_clicks_are_named() -> None:
    rows = _rows({2.0: 0.2})
    with pytest.raises(InputError, match="ascending"):
        dice_by_size(rows, "r", click=5, bounds=(50.0, 10.0))
    with pytest.raises(InputError, match="after 7 clicks"):
        dice_by_size(rows, "r", click=7)


def test_table_follows_the_readme_order(tmp_path: Path) -> None:
    _write_run(tmp_path, "a-first", _rows({5.0: 0.5, 100.0: 0.1}))
    _write_run(tmp_path, "b-second", _rows({5.0: 0.2, 100.0: 0.9}))
    (tmp_path / "README.md").write_text(
        "| run |\n|---|\n| [b-second](b-second/) |\n| [a-first](a-first/) |\n"
    )
    assert runs_in_order(tmp_path) == ["b-second", "a-first"]
    table = size_table(tmp_path, click=5).splitlines()
    assert table[-2] == "| b-second | 0.200 | - | 0.900 |"
    assert table[-1] == "| a-first | 0.500 | - | 0.100 |"
    with pytest.raises(InputError, match=r"train-ct\.csv"):
        size_table(tmp_path, click=5, part="train-ct")


def test_command_line_names_the_bad_folder_and_bounds(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(SystemExit):
        main([str(missing)])
    assert f"{missing} is not a folder of experiment runs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--bounds", "10,big"])
    assert "'10,big'" in capsys.readouterr().err
