"""napari + napari-nninteractive against a running ``fastsam3d serve`` (run under Xvfb by
``test_napari.py``): load the bundled CT as an image layer, initialise the plugin's widget in
remote mode, add one point to its point layer (what a click does), wait for the label layer,
save a screenshot, and write what happened as JSON.

    xvfb-run -a python tests/server/napari_e2e.py URL TOKEN OUT_DIR
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from pathlib import Path

import httpx
import napari
import nibabel as nib
import numpy as np
from qtpy.QtWidgets import QApplication
from scipy import ndimage

from fastsam3d import samples
from fastsam3d.data.align import labels_on_grid
from fastsam3d.data.io import read_volume
from fastsam3d.server import routes
from fastsam3d.server.routes import fill


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    """Process Qt events until ``condition()`` holds (the plugin works in Qt worker threads)."""
    deadline = time.monotonic() + timeout
    while not condition():
        QApplication.processEvents()
        if time.monotonic() > deadline:
            raise TimeoutError(f"napari-nninteractive: {what} did not happen in {timeout:.0f} s")
        time.sleep(0.05)


def main(url: str, token: str, out: Path) -> None:
    from napari_nninteractive.widget_main import nnInteractiveWidget

    out.mkdir(parents=True, exist_ok=True)
    sample = samples.sample("ct")
    volume = read_volume(sample.image)
    liver = labels_on_grid(read_volume(sample.labels), volume) == samples.label_value(
        "total", "liver"
    )
    viewer = napari.Viewer(show=False)
    viewer.add_image(volume.array.astype(np.float32), name="ct", scale=volume.spacing)
    widget = nnInteractiveWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.server_url_edit.setText(url)
    widget.api_key_edit.setText(token)
    widget.image_selection.setCurrentText("ct")
    widget.on_init()
    wait_for(lambda: widget.point_layer_name in viewer.layers, "initialisation (point layer)")
    depth = ndimage.distance_transform_edt(np.pad(liver, 1))[1:-1, 1:-1, 1:-1]  # FOV = border
    point = np.unravel_index(int(np.argmax(depth)), liver.shape)
    t0 = time.perf_counter()
    viewer.layers[widget.point_layer_name].add(np.array(point, dtype=float))
    labels = viewer.layers[widget.label_layer_name]
    wait_for(lambda: np.asarray(labels.data).any(), "a mask in the label layer")
    seconds = time.perf_counter() - t0
    mask = np.asarray(labels.data) > 0
    sid = widget.session.lease_status()["session_id"]
    resp = httpx.get(
        url + fill(routes.LABELS_FILE, sid=sid, fmt="nii.gz"),
        headers={"Authorization": f"Bearer {token}"},
        timeout=60,
    )
    resp.raise_for_status()
    server = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(resp.content)).dataobj) > 0
    viewer.dims.ndisplay = 2
    viewer.dims.set_point(0, point[0] * volume.spacing[0])  # the slice through the click
    viewer.reset_view()
    viewer.camera.center = (point[1] * volume.spacing[1], point[2] * volume.spacing[2])
    viewer.camera.zoom *= 3
    QApplication.processEvents()
    viewer.screenshot(str(out / "napari-window.png"), canvas_only=False)
    shot = out / "napari-liver-click.png"  # the canvas around the click, mask over the CT
    viewer.screenshot(str(shot), canvas_only=True)
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)[..., :3]
    coloured = (np.ptp(pixels, axis=-1) > 0.1).sum()  # label / point colours, not grey CT
    result = {
        "coloured_pixels": int(coloured),
        "point": [int(v) for v in point],
        "mask_voxels": int(mask.sum()),
        "equals_server": bool(np.array_equal(mask, server)),
        "on_liver": float((mask & liver).sum() / max(int(mask.sum()), 1)),
        "seconds_to_mask": seconds,
        "screenshot": str(shot),
    }
    (out / "napari-e2e.json").write_text(json.dumps(result, indent=2) + "\n")
    viewer.close()  # the widget releases its lease itself


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], Path(sys.argv[3]))
