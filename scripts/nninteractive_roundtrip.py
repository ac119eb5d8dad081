"""Warm click round trip through the nnInteractive protocol on a large scan: ``fastsam3d serve``
in a subprocess (bundled model, auto runtime), the real ``nninteractive-client``, a synthetic
512 x 512 x 300 CT-like volume. Times ``set_image`` (upload and session), the first click of a
region (the encoder runs) and then warm clicks in the same region, each from the client call to
the updated target buffer; several rounds, medians printed and written as JSON. ``set_image`` is
timed twice per round: with whole-number HU values (as CT files store them; what the clicks run
on) and with the same image plus sub-HU float noise, which the client's compressor cannot
shrink (the worst case for the upload).

    .venv/bin/python scripts/nninteractive_roundtrip.py [--rounds 3] [--clicks 6] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from nnInteractive.inference.remote import nnInteractiveRemoteInferenceSession

from fastsam3d.bench.encoders import machine_info
from fastsam3d.server.process import serving


def synthetic_ct(rng: np.random.Generator) -> np.ndarray:
    """``(1, 512, 512, 300)`` float32 of whole HU: noise around 0 HU and a brighter box (the
    object)."""
    image = rng.normal(0, 30, (512, 512, 300)).astype(np.float32)
    image[200:330, 180:300, 100:220] += 200
    return np.round(image)[None]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clicks", type=int, default=6, help="warm clicks per round")
    parser.add_argument("--json", type=Path, help="write the measurements here")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    image = synthetic_ct(rng)
    noisy = image + rng.uniform(-0.5, 0.5, image.shape).astype(np.float32)
    spacing = [0.8, 0.8, 1.0]
    upload, upload_noisy, first, warm = [], [], [], []
    with tempfile.TemporaryDirectory() as data, serving(["--data-dir", data]) as server:
        for r in range(args.rounds):
            client = nnInteractiveRemoteInferenceSession(server.url)
            try:
                t0 = time.perf_counter()
                client.set_image(noisy, {"spacing": spacing})
                upload_noisy.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                client.set_image(image, {"spacing": spacing})
                client.set_target_buffer(np.zeros(image.shape[1:], dtype=np.uint8))
                upload.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                client.add_point_interaction([260, 240, 160], include_interaction=True)
                first.append(time.perf_counter() - t0)
                for n in range(args.clicks):
                    t0 = time.perf_counter()
                    client.add_point_interaction([262 + n, 238, 158], include_interaction=True)
                    warm.append(time.perf_counter() - t0)
                print(
                    f"round {r + 1}: set_image {1e3 * upload[-1]:.0f} ms (float noise "
                    f"{1e3 * upload_noisy[-1]:.0f} ms), first click "
                    f"{1e3 * first[-1]:.0f} ms, warm clicks "
                    + " ".join(f"{1e3 * t:.0f}" for t in warm[-args.clicks :])
                    + f" ms; mask {int(client.target_buffer.sum())} voxels"
                )
            finally:
                client.close()
    result = {
        "machine": machine_info(threads=torch.get_num_threads()),
        "image": list(image.shape),
        "rounds": args.rounds,
        "set_image_ms_median": 1e3 * statistics.median(upload),
        "set_image_float_noise_ms_median": 1e3 * statistics.median(upload_noisy),
        "first_click_ms_median": 1e3 * statistics.median(first),
        "warm_click_ms_median": 1e3 * statistics.median(warm),
        "warm_click_ms": [1e3 * t for t in warm],
    }
    print(
        f"median: set_image {result['set_image_ms_median']:.0f} ms (float noise "
        f"{result['set_image_float_noise_ms_median']:.0f} ms), first click "
        f"{result['first_click_ms_median']:.0f} ms, warm click "
        f"{result['warm_click_ms_median']:.0f} ms ({len(warm)} warm clicks)"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
