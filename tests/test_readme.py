"""The README's quickstart runs as written (random weights instead of a checkpoint file)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs() -> None:
    text = README.read_text()
    block = re.search(r"## Quickstart\n\n```python\n(.*?)```", text, re.S)
    assert block is not None
    code = block.group(1)
    loader = 'fastsam3d.load_model("fastsam3d", checkpoint="fastsam3d.pth")'
    assert loader in code
    namespace: dict[str, object] = {}
    exec(code.replace(loader, 'fastsam3d.load_model("fastsam3d")'), namespace)
    assert namespace["embedding"].shape == (1, 384, 8, 8, 8)  # type: ignore[attr-defined]
    assert namespace["logits"].shape == (1, 1, 32, 32, 32)  # type: ignore[attr-defined]
    mask = namespace["mask"]
    assert isinstance(mask, torch.Tensor)
    assert mask.dtype == torch.bool
