"""The README's quickstart runs as written (random weights instead of a checkpoint file)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs() -> None:
    text = README.read_text()
    block = re.search(r"## Quickstart\n.*?```python\n(.*?)```", text, re.S)
    assert block is not None
    code = block.group(1)
    loader = 'fastsam3d.load_model("fastsam3d", checkpoint="fastsam3d.pth")'
    assert loader in code
    namespace: dict[str, object] = {}
    exec(code.replace(loader, 'fastsam3d.load_model("fastsam3d", random_weights=True)'), namespace)
    assert namespace["embedding"].shape == (1, 384, 8, 8, 8)  # type: ignore[attr-defined]
    assert namespace["logits"].shape == (1, 1, 32, 32, 32)  # type: ignore[attr-defined]
    mask = namespace["mask"]
    assert isinstance(mask, torch.Tensor)
    assert mask.dtype == torch.bool


def test_session_example_runs(tmp_path, monkeypatch) -> None:
    """The "From Python" example, on the bundled CT with random weights."""
    from fastsam3d import samples

    text = README.read_text()
    block = re.search(r"From Python:\n\n```python\n(.*?)```", text, re.S)
    assert block is not None
    code = block.group(1)
    for old, new in (
        (
            'load_model("fastsam3d", "fastsam3d.pth")',
            'load_model("fastsam3d", random_weights=True)',
        ),
        ('read_volume("ct.nii.gz")', f'read_volume("{samples.sample("ct").image}")'),
    ):
        assert old in code
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    exec(code, {})
    assert (tmp_path / "liver.nii.gz").is_file()
