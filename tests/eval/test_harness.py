"""The evaluation harness: protocols with an oracle, determinism, resume, torchrun sharding."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from fastsam3d.cli import main
from fastsam3d.data.frame import FrameSpec, roi_around
from fastsam3d.data.volume import Volume
from fastsam3d.eval import runner
from fastsam3d.eval.clicks import CenterClicker
from fastsam3d.eval.datasets import load_cases
from fastsam3d.eval.protocols import Method, run_paper, run_realistic

from ..helpers import OracleModel, finish_torchrun, start_torchrun

FRAME = FrameSpec(size=32, normalization="none")


def _truth_volume(gt: np.ndarray) -> Volume:
    return Volume(gt.astype(np.float32), np.diag([1.5, 1.5, 1.5, 1.0]))


def test_oracle_scores_one_when_its_region_covers_the_object() -> None:
    idx = np.indices((40, 40, 40)).reshape(3, -1).T
    gt = (np.linalg.norm(idx - [20, 18, 22], axis=1) <= 8).reshape(40, 40, 40)
    oracle = Method("oracle", OracleModel(size=32, factor=1))
    records = run_realistic(
        oracle, _truth_volume(gt), gt, CenterClicker(), 3, np.random.default_rng(0), FRAME
    )
    assert records[0].dice == 1.0
    assert records[0].nsd == 1.0
    assert records[1].index is None  # nothing left to correct: no further clicks


def test_oracle_scores_exactly_the_covered_fraction_otherwise() -> None:
    gt = np.zeros((70, 40, 40), bool)
    gt[2:68, 12:28, 12:28] = True  # 99 mm long: more than the 48 mm region
    volume = _truth_volume(gt)
    rng = np.random.default_rng(0)
    first = CenterClicker().next_click(
        np.zeros_like(gt), gt, np.random.default_rng(0), volume.spacing, 0
    )
    records = run_realistic(
        Method("oracle", OracleModel(size=32, factor=1)), volume, gt, CenterClicker(), 1, rng, FRAME
    )
    roi = roi_around(volume, np.array(first.index, float), FRAME)
    to_roi = roi.roi_from_volume(volume)
    coords = np.indices(gt.shape).reshape(3, -1).T @ to_roi[:3, :3].T + to_roi[:3, 3]
    covered = roi.contains(coords).reshape(gt.shape)
    inside = int((gt & covered).sum())
    assert 0 < inside < gt.sum()
    assert records[0].dice == 2 * inside / (inside + int(gt.sum()))


def test_paper_protocol_with_the_oracle() -> None:
    gt = np.zeros((50, 50, 50), bool)
    gt[10:30, 15:35, 20:40] = True
    records = run_paper(
        Method("oracle", OracleModel(size=32, factor=1)),
        _truth_volume(gt),
        gt,
        CenterClicker(),
        2,
        np.random.default_rng(0),
        FRAME,
    )
    assert records[0].dice == 1.0


def _dataset(root: Path) -> Path:
    rng = np.random.default_rng(7)
    cases = []
    for n in range(3):
        shape = (44, 40, 36)
        idx = np.indices(shape).reshape(3, -1).T
        labels = np.zeros(shape, np.uint8)
        for value, centre in ((1, rng.uniform(12, 24, 3)), (2, rng.uniform(12, 24, 3) + 6)):
            labels[(np.linalg.norm(idx - centre, axis=1) <= 6).reshape(shape)] = value
        image = labels * 100.0 + rng.normal(0, 10, shape)
        affine = np.diag([1.5, 1.5, 1.5, 1.0])
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(root / f"img{n}.nii.gz"))
        nib.save(nib.Nifti1Image(labels, affine), str(root / f"lab{n}.nii.gz"))
        cases.append({"image": f"img{n}.nii.gz", "label": f"lab{n}.nii.gz", "case_id": f"case{n}"})
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"classes": {"1": "blob_a", "2": "blob_b"}, "cases": cases}))
    return manifest


EVAL_ARGS = [
    "--layout",
    "manifest",
    "--model",
    "test-tiny",
    "--checkpoint",
    "random",
    "--clicks",
    "1,2,3",
    "--seed",
    "3",
    "--threads",
    "1",
    "--runtime",
    "torch",  # the fp32 reference (the default, auto, may pick a bf16 runtime)
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return _dataset(tmp_path_factory.mktemp("data"))


def test_same_seed_gives_identical_results(dataset, tmp_path, capsys) -> None:
    for out in ("a", "b"):
        assert main(["eval", str(dataset), *EVAL_ARGS, "--out", str(tmp_path / out)]) == 0
    a, b = (
        (tmp_path / "a" / "results.csv").read_text(),
        (tmp_path / "b" / "results.csv").read_text(),
    )
    assert a == b
    lines = a.splitlines()
    assert len(lines) == 1 + 3 * 2 * 2 * 3  # header + cases x structures x methods x clicks
    assert "random walker (no network)" in a
    summary = (tmp_path / "a" / "summary.md").read_text()
    assert "| Dice@1 | Dice@2 | Dice@3 |" in summary
    assert (tmp_path / "a" / "dice_vs_clicks.png").stat().st_size > 1000
    assert (tmp_path / "a" / "timings.csv").read_text().count("\n") == len(lines)
    assert (
        main(["eval", str(dataset), *EVAL_ARGS, "--seed", "4", "--out", str(tmp_path / "c")]) == 0
    )
    assert (tmp_path / "c" / "results.csv").read_text() != a


def test_resume_recomputes_only_missing_tasks(dataset, tmp_path, monkeypatch) -> None:
    out = tmp_path / "run"
    assert main(["eval", str(dataset), *EVAL_ARGS, "--out", str(out)]) == 0
    before = (out / "results.csv").read_text()
    (out / "parts" / "case1__blob_b__test-tiny_random_weights.csv").unlink()
    calls = []
    original = runner.run_realistic
    monkeypatch.setattr(
        runner, "run_realistic", lambda *a, **k: calls.append(a[0].name) or original(*a, **k)
    )
    assert main(["eval", str(dataset), *EVAL_ARGS, "--out", str(out)]) == 0
    assert calls == ["test-tiny (random weights)"]
    assert (out / "results.csv").read_text() == before


def test_paper_protocol_with_upstream_clicks(dataset, tmp_path) -> None:
    out = tmp_path / "paper"
    args = [
        "eval",
        str(dataset),
        *EVAL_ARGS,
        "--protocol",
        "paper",
        "--simulator",
        "upstream",
        "--logit-quirk",
        "--no-baseline",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    summary = (out / "summary.md").read_text()
    assert "Dice max<=@3 (upstream)" in summary
    assert "upstream+quirk" in (out / "results.csv").read_text()


def test_two_torchrun_processes_equal_one(dataset, tmp_path) -> None:
    single, double = tmp_path / "one", tmp_path / "two"
    assert main(["eval", str(dataset), *EVAL_ARGS, "--out", str(single)]) == 0
    args = ["--standalone", "--nproc_per_node", "2", "-m", "fastsam3d.cli", "eval", str(dataset)]
    finish_torchrun([start_torchrun([*args, *EVAL_ARGS, "--out", str(double)])])
    assert (double / "results.csv").read_text() == (single / "results.csv").read_text()
    parts = {p.name for p in (double / "parts").glob("*.csv") if not p.name.endswith("timing.csv")}
    assert len(parts) == 12


SPAWN_CONFIG = runner.EvalConfig(clicks=(1, 2), seed=3)


def _spawn_methods() -> list[Method]:
    import fastsam3d

    return [Method("tiny", fastsam3d.load_model("test-tiny", seed=3, random_weights=True))]


def _evaluate_as_rank(rank: int, world: int, port: int, manifest: str, out: str) -> None:
    """A torchrun-like worker: joins a gloo group and evaluates into a folder of its own."""
    import torch

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        cases = load_cases(manifest, "manifest")
        folder = Path(out) / f"rank{rank}"
        runner.evaluate(cases, _spawn_methods(), SPAWN_CONFIG, folder, rank=rank, world=world)
    finally:
        torch.distributed.destroy_process_group()


def test_rank0_gathers_the_parts_of_ranks_that_share_no_folder(dataset, tmp_path) -> None:
    """Two gloo ranks with separate output folders (nodes without a shared disk): rank 0 ends up
    with every part and merges the same ``results.csv`` as one process."""
    import socket

    import torch.multiprocessing as mp

    single = tmp_path / "single"
    runner.evaluate(load_cases(dataset, "manifest"), _spawn_methods(), SPAWN_CONFIG, single)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_evaluate_as_rank, args=(2, port, str(dataset), str(tmp_path)), nprocs=2)

    def results(folder: Path) -> set[str]:
        return {p.name for p in (folder / "parts").glob("*.csv") if "timing" not in p.name}

    assert results(tmp_path / "rank1") == {"case1__blob_a__tiny.csv", "case1__blob_b__tiny.csv"}
    assert results(tmp_path / "rank0") == results(single)
    assert len(results(single)) == 6
    merged = runner.merge(tmp_path / "rank0")[0].read_text()
    assert merged == runner.merge(single)[0].read_text()
    assert not [p for p in tmp_path.rglob(".*")]  # no temporary file left behind


def test_cli_argument_errors(dataset, tmp_path, capsys) -> None:
    assert (
        main(
            [
                "eval",
                str(dataset),
                "--layout",
                "manifest",
                "--model",
                "test-tiny",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "one --checkpoint per --model" in capsys.readouterr().err
    assert (
        main(
            ["eval", str(dataset), "--layout", "manifest", "--no-baseline", "--out", str(tmp_path)]
        )
        == 2
    )
    assert "nothing to evaluate" in capsys.readouterr().err
    assert (
        main(["eval", str(tmp_path / "missing"), "--layout", "amos", "--out", str(tmp_path)]) == 2
    )
    assert "no such dataset" in capsys.readouterr().err


def test_cases_are_loaded_in_a_stable_order(dataset) -> None:
    assert [c.case_id for c in load_cases(dataset, "manifest")] == ["case0", "case1", "case2"]


def test_models_from_their_own_checkpoints(dataset, tmp_path, capsys) -> None:
    import fastsam3d
    from fastsam3d.checkpoint import save_native

    model = fastsam3d.load_model("test-tiny", seed=3, random_weights=True)
    path = save_native(tmp_path / "own.safetensors", model.state_dict(), model.cfg, None)
    args = [a if a != "random" else str(path) for a in EVAL_ARGS]
    args[args.index("test-tiny")] = "from-checkpoint"
    out = tmp_path / "own"
    assert main(["eval", str(dataset), *args, "--no-baseline", "--out", str(out)]) == 0
    assert "from-checkpoint (own.safetensors)" in (out / "results.csv").read_text()
    bad = [a if a != "test-tiny" else "from-checkpoint" for a in EVAL_ARGS]
    assert main(["eval", str(dataset), *bad, "--out", str(tmp_path / "bad")]) == 2
    assert "needs a checkpoint file" in capsys.readouterr().err
