"""Server cost of a click and of the label-map update on a large scan (in process, no HTTP
socket): a synthetic 512 x 512 x 300 CT-like volume, 6 clicks in one region; prints per click the
click time (and the model's share), the time to fetch the changed box (what the web page asks
for) and the time to fetch the whole label map.

    .venv/bin/python scripts/serve_big_volume.py
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from fastapi.testclient import TestClient

from fastsam3d.build import load_model
from fastsam3d.server import ServerConfig, create_app, routes
from fastsam3d.server.routes import fill


def main() -> None:
    torch.set_num_threads(2)
    folder = Path(tempfile.mkdtemp(prefix="fastsam3d-big-"))
    rng = np.random.default_rng(0)
    image = rng.normal(0, 30, (512, 512, 300)).astype(np.int16)
    image[200:330, 180:300, 100:220] += 200
    nib.save(nib.Nifti1Image(image, np.diag([0.8, 0.8, 1.0, 1.0])), folder / "big.nii.gz")
    app = create_app(
        load_model("fastsam3d-lite"), ServerConfig(data_dir=folder, recovery_dir=folder / "rec")
    )
    clicks, boxes, fulls = [], [], []
    with TestClient(app) as client:
        sid = client.post(routes.SESSIONS, json={"path": "big.nii.gz"}).json()["id"]
        revision = 0
        for n in range(6):
            t0 = time.perf_counter()
            state = client.post(fill(routes.CLICKS, sid=sid), json={"point": [260 + n, 240, 160]})
            t1 = time.perf_counter()
            update = client.get(fill(routes.LABELS, {"since": revision}, sid=sid))
            t2 = time.perf_counter()
            client.get(fill(routes.LABELS, sid=sid))
            t3 = time.perf_counter()
            revision = int(update.headers["x-revision"])
            clicks.append(1e3 * (t1 - t0))
            boxes.append(1e3 * (t2 - t1))
            fulls.append(1e3 * (t3 - t2))
            model = state.json()["click"]["model_ms"]["total"]
            print(
                f"click {clicks[-1]:4.0f} ms (model {model:4.0f}), changed box "
                f"{update.headers['x-box']} {boxes[-1]:4.0f} ms, whole map {fulls[-1]:4.0f} ms"
            )
    print(
        f"median of clicks 2-6: click {statistics.median(clicks[1:]):.0f} ms, changed box "
        f"{statistics.median(boxes[1:]):.0f} ms, whole map {statistics.median(fulls[1:]):.0f} ms"
    )


if __name__ == "__main__":
    main()
