"""Load test of ``fastsam3d serve`` on loopback: N concurrent sessions clicking for T seconds.

The server runs in its own process (uvicorn, as users run it); each simulated user is a thread
with its own HTTP client and session on a bundled scan. A user picks a labelled structure,
clicks inside it (first click positive, later ones positive or negative near the first), now
and then undoes, redoes, starts a new object or resets. Measured: client round-trip latency of
every click (median, p95), errors (any non-2xx), server memory (RSS sampled every 0.25 s).

Cross-talk check: after every request the server's click lists must equal what this user sent;
at the end every session's label map is compared with a replay of its surviving clicks through
a fresh in-process :class:`~fastsam3d.interactive.annotation.Annotation` (same model).
"""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import samples
from ..data.align import labels_on_grid
from ..data.io import read_volume
from ..errors import InputError
from ..registry import get_spec
from ..server import routes
from ..server.encoding import decode_compact
from ..server.process import serving
from ..server.routes import fill


@dataclass
class UserLog:
    """What one simulated user did and saw."""

    sid: str = ""
    latencies_ms: list[float] = field(default_factory=list)
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    crosstalk: list[str] = field(default_factory=list)
    clicks: dict[int, list[tuple[tuple[float, float, float], bool]]] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)  # object labels in creation order


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _structures(sample_name: str, min_voxels: int = 300) -> list[np.ndarray]:
    """Voxel indices ``(N, 3)`` of each labelled structure big enough to click on."""
    sample = samples.sample(sample_name)
    volume = read_volume(sample.image)
    labels = labels_on_grid(read_volume(sample.labels), volume)
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    return [
        np.argwhere(labels == v) for v, c in zip(values, counts, strict=True) if c >= min_voxels
    ]


def _user(
    url: str,
    path: str,
    structures: list[np.ndarray],
    seed: int,
    clock: dict[str, float],
    opened_all: threading.Barrier,
    go: threading.Event,
    log: UserLog,
) -> None:
    import httpx

    rng = np.random.default_rng(seed)
    with httpx.Client(base_url=url, timeout=120) as client:

        def call(method: str, route: str, **kwargs: Any) -> dict[str, Any] | None:
            log.requests += 1
            r = client.request(method, route, **kwargs)
            if r.status_code >= 400:
                log.errors.append(f"{method} {route}: {r.status_code} {r.text[:200]}")
                return None
            return r.json() if r.content else {}

        opened = call("POST", routes.SESSIONS, json={"path": path})
        opened_all.wait()  # every user has its session: the clock starts
        go.wait()
        stop_at = clock["stop_at"]
        if opened is None:
            return
        log.sid = sid = opened["id"]

        def check(state: dict[str, Any] | None) -> None:
            if state is None:
                return
            if state.get("id") != sid:
                log.crosstalk.append(f"answer for session {state.get('id')} on {sid}")
            seen = {
                o["label"]: [(tuple(c["index"]), c["positive"]) for c in o["clicks"]]
                for o in state["objects"]
            }
            if seen != log.clicks:
                log.crosstalk.append(f"click lists differ after {log.requests} requests")

        while time.monotonic() < stop_at:
            # a new object for a new structure (reset the oldest when there are five)
            if len(log.order) >= 5:
                label = log.order[0]
                state = call("POST", fill(routes.RESET, {"object": label}, sid=sid))
                if state is not None:
                    log.clicks[label] = []
                    call("POST", fill(routes.ACTIVATE, sid=sid, label=label))
            else:
                state = call("POST", fill(routes.OBJECTS, sid=sid), json={})
                if state is not None:
                    label = state["active"]
                    log.order.append(label)
                    log.clicks[label] = []
                check(state)
            voxels = structures[rng.integers(len(structures))]
            first = voxels[rng.integers(len(voxels))]
            near = voxels[np.abs(voxels - first).max(axis=1) <= 12]
            for n in range(int(rng.integers(2, 6))):
                if time.monotonic() >= stop_at:
                    break
                point = first if n == 0 else near[rng.integers(len(near))]
                positive = bool(n == 0 or rng.random() < 0.7)
                index = (float(point[0]), float(point[1]), float(point[2]))
                t0 = time.perf_counter()
                state = call(
                    "POST",
                    fill(routes.CLICKS, sid=sid),
                    json={"point": list(index), "positive": positive},
                )
                if state is not None:
                    log.latencies_ms.append(1e3 * (time.perf_counter() - t0))
                    log.clicks[state["active"]].append((index, positive))
                check(state)
                if rng.random() < 0.15 and log.clicks[state["active"] if state else label]:
                    active = state["active"] if state else label
                    undone = call("POST", fill(routes.UNDO, sid=sid))
                    if undone is not None:
                        removed = log.clicks[active].pop()
                    check(undone)
                    if undone is not None and rng.random() < 0.5:
                        redone = call("POST", fill(routes.REDO, sid=sid))
                        if redone is not None:
                            log.clicks[active].append(removed)
                        check(redone)


def run_load_test(
    *,
    sessions: int = 8,
    seconds: float = 60.0,
    sample: str = "ct",
    model: str = "fastsam3d-lite",
    threads: int = 2,
    replay: bool = True,
    progress: Callable[[float], None] | None = None,
    runtime: str = "torch",
) -> dict[str, Any]:
    """Start a server, run ``sessions`` users for ``seconds``, stop it; return the report.

    ``runtime``: the server's ``--runtime``; the replay runs the same one in this process (with
    ``torch``, the fp32 reference, replays are exact; other runtimes may differ by a few voxels
    between processes with different thread pools)."""
    import httpx

    if sessions < 1 or seconds <= 0:
        raise InputError(
            f"need at least one session and a positive time, got {sessions}, {seconds}"
        )

    image = samples.sample(sample).image
    structures = _structures(sample)
    with (
        tempfile.TemporaryDirectory(prefix="fastsam3d-load-") as tmp,
        serving(
            [
                *("--model", model, "--data-dir", str(image.parent), "--threads", str(threads)),
                *(("--checkpoint", "random") if get_spec(model).weights is None else ()),
                *("--runtime", runtime),
                *("--recovery-dir", str(Path(tmp) / "recovery"), "--max-sessions", str(sessions)),
            ]
        ) as running,
    ):
        url, pid = running.url, running.process.pid
        rss_idle = _rss_mb(pid)
        logs = [UserLog() for _ in range(sessions)]
        opened_all = threading.Barrier(sessions + 1)
        go = threading.Event()
        clock: dict[str, float] = {}
        workers = [
            threading.Thread(
                target=_user,
                args=(url, image.name, structures, 1000 + n, clock, opened_all, go, logs[n]),
                daemon=True,
            )
            for n in range(sessions)
        ]
        for worker in workers:
            worker.start()
        opened_all.wait()
        clock["stop_at"] = time.monotonic() + seconds
        go.set()
        t0 = time.monotonic()
        rss: list[tuple[float, float]] = []
        while any(w.is_alive() for w in workers):
            elapsed = time.monotonic() - t0
            rss.append((elapsed, _rss_mb(pid)))
            if progress is not None:
                progress(min(elapsed, seconds))
            time.sleep(0.25)
        wall = time.monotonic() - t0
        labels = {}
        for log in logs:
            if log.sid:
                r = httpx.get(url + fill(routes.LABELS, sid=log.sid), timeout=60)
                i, j, k = (int(v) for v in r.headers["x-shape"].split(","))
                labels[log.sid] = decode_compact(r.content, (i, j, k)).copy()
        health = httpx.get(url + routes.HEALTH, timeout=10).json()

    replayed = _replay(image, model, runtime, threads, logs, labels) if replay else {}
    latencies = np.array([v for log in logs for v in log.latencies_ms])
    rss_values = np.array([v for _, v in rss])
    return {
        "sessions": sessions,
        "seconds": seconds,
        "wall_seconds": wall,
        "sample": sample,
        "model": model,
        "threads": threads,
        "clicks": int(latencies.size),
        "requests": sum(log.requests for log in logs),
        "clicks_per_second": float(latencies.size / wall) if wall else 0.0,
        "latency_ms": {
            "median": float(np.median(latencies)) if latencies.size else float("nan"),
            "p95": float(np.percentile(latencies, 95)) if latencies.size else float("nan"),
            "max": float(latencies.max()) if latencies.size else float("nan"),
        },
        "per_session_clicks": [len(log.latencies_ms) for log in logs],
        "errors": [e for log in logs for e in log.errors],
        "crosstalk": [c for log in logs for c in log.crosstalk],
        "replay_mismatched_voxels": replayed,
        "memory_mb": {
            "idle": rss_idle,
            "peak": float(np.nanmax(rss_values)) if rss_values.size else float("nan"),
            "end": float(rss_values[-1]) if rss_values.size else float("nan"),
        },
        "open_sessions_at_end": health["sessions"],
        "latencies_ms": latencies.round(2).tolist(),
        "rss_mb": [(round(t, 2), round(v, 1)) for t, v in rss],
    }


def _replay(
    image: Path,
    model: str,
    runtime: str,
    threads: int,
    logs: list[UserLog],
    labels: dict[str, np.ndarray],
) -> dict[str, int]:
    """Voxels where each session's label map differs from its surviving clicks replayed
    through a fresh in-process annotation."""
    from ..build import load_model
    from ..interactive.annotation import Annotation
    from ..runtime.select import prepare

    volume = read_volume(image)
    net = load_model(model, random_weights=get_spec(model).weights is None)
    runner = prepare(net, runtime, threads=threads)  # what the server runs
    replayed: dict[str, int] = {}
    for log in logs:
        if not log.sid:
            continue
        annotation = Annotation(volume, runner, source=image.name, uploaded=False)
        for label in sorted(log.clicks):
            obj = annotation.add_object()
            while obj.label < label:  # keep label values aligned with the server's
                annotation.remove(obj.label)
                obj = annotation.add_object()
            for index, positive in log.clicks[label]:
                annotation.click(index, positive, "voxel", obj.label)
        replayed[log.sid] = int(np.count_nonzero(annotation.label_map() != labels[log.sid]))
    return replayed


def load_markdown(report: dict[str, Any]) -> str:
    lat, mem = report["latency_ms"], report["memory_mb"]
    mismatched = sum(report["replay_mismatched_voxels"].values())
    return "\n".join(
        [
            "| sessions | seconds | clicks | clicks/s | median ms | p95 ms | max ms | errors | "
            "cross-talk | replay mismatch (voxels) | RSS idle / peak / end MB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            f"| {report['sessions']} | {report['seconds']:.0f} | {report['clicks']} | "
            f"{report['clicks_per_second']:.1f} | {lat['median']:.0f} | {lat['p95']:.0f} | "
            f"{lat['max']:.0f} | {len(report['errors'])} | {len(report['crosstalk'])} | "
            f"{mismatched} | {mem['idle']:.0f} / {mem['peak']:.0f} / {mem['end']:.0f} |",
        ]
    )


def plot_load(report: dict[str, Any], path: str | Path) -> Path:
    """Latency histogram and server memory over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..files import atomic_output

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    lat = np.array(report["latencies_ms"])
    ax1.hist(lat, bins=40, color="#4477aa")
    for q, style in ((50, "-"), (95, "--")):
        v = float(np.percentile(lat, q)) if lat.size else 0.0
        ax1.axvline(v, color="k", linestyle=style, label=f"p{q} {v:.0f} ms")
    ax1.set_xlabel("click round trip (ms)")
    ax1.set_ylabel("clicks")
    ax1.legend()
    ax1.set_title(f"{report['sessions']} sessions, {report['clicks']} clicks")
    memory = np.array(report["rss_mb"], dtype=float).reshape(-1, 2)
    ax2.plot(memory[:, 0], memory[:, 1], color="#cc6677")
    ax2.set_xlabel("time (s)")
    ax2.set_ylabel("server RSS (MB)")
    ax2.set_ylim(bottom=0)
    ax2.set_title("server memory")
    fig.tight_layout()
    out = Path(path)
    with atomic_output(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out
