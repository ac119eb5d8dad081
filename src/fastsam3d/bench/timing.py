"""Timing on shared, noisy machines: round-robin rounds, medians, and foreign-load monitoring.

Other processes on a 2-core machine can double a timing. :class:`ForeignLoad` reads whole-machine
busy time from ``/proc/stat`` minus this process's own CPU time, so every sample records how many
cores *other* work used while it ran; samples taken under more than ``max_foreign`` cores of
foreign load are retried.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


def _machine_busy_ticks() -> int | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields[:8]) - idle


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class ForeignLoad:
    """Context manager measuring cores used by *other* processes during its block.

    ``cores`` is ``None`` where ``/proc/stat`` is unavailable (non-Linux).
    """

    def __init__(self) -> None:
        self.cores: float | None = None
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    def __enter__(self) -> ForeignLoad:
        self._busy = _machine_busy_ticks()
        self._own = _own_cpu_seconds()
        self._t = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        busy = _machine_busy_ticks()
        wall = time.perf_counter() - self._t
        if busy is None or self._busy is None or wall <= 0:
            return
        machine = (busy - self._busy) / self._hz
        own = _own_cpu_seconds() - self._own
        self.cores = max(0.0, (machine - own) / wall)


@dataclass
class TimingStats:
    """Per-candidate samples (seconds) and the foreign load seen during each."""

    name: str
    samples: list[float] = field(default_factory=list)
    foreign: list[float | None] = field(default_factory=list)
    retries: int = 0

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.samples)

    @property
    def min_ms(self) -> float:
        return 1e3 * min(self.samples)

    @property
    def p90_ms(self) -> float:
        ordered = sorted(self.samples)
        return 1e3 * ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]

    @property
    def max_foreign(self) -> float | None:
        seen = [f for f in self.foreign if f is not None]
        return max(seen) if seen else None

    def to_dict(self) -> dict[str, object]:
        return {
            "median_ms": self.median_ms,
            "min_ms": self.min_ms,
            "p90_ms": self.p90_ms,
            "samples_ms": [1e3 * s for s in self.samples],
            "foreign_cores": self.foreign,
            "retries": self.retries,
        }


def round_robin(
    candidates: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int = 1,
    max_foreign: float = 0.2,
    max_retries: int = 3,
    progress: Callable[[Iterable[int]], Iterable[int]] | None = None,
) -> dict[str, TimingStats]:
    """Time every candidate once per round, A B A B ..., after ``warmup`` untimed calls each.

    A sample taken while other processes used more than ``max_foreign`` cores is repeated (up
    to ``max_retries`` times; the last attempt is kept with its load recorded).
    """
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    stats = {name: TimingStats(name) for name in candidates}
    steps: Iterable[int] = range(rounds * len(candidates))
    if progress is not None:
        steps = progress(steps)
    names = list(candidates)
    for step in steps:
        name = names[step % len(names)]
        fn, record = candidates[name], stats[name]
        for attempt in range(max_retries + 1):
            with ForeignLoad() as load:
                start = time.perf_counter()
                fn()
                elapsed = time.perf_counter() - start
            if load.cores is None or load.cores <= max_foreign or attempt == max_retries:
                break
            record.retries += 1
        record.samples.append(elapsed)
        record.foreign.append(load.cores)
    return stats
