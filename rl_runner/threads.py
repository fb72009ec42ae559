"""trainer.torch_threads=auto under load: keep the thread count that is fastest now, measured.

torch's OpenMP runtime (libgomp) spin-waits at every barrier. With a core taken by another
process, a second torch thread only runs when the scheduler gives it a slice, and a sac update
(256x256 layers) went from 10.5 ms on one thread to 380-450 ms on two (Intel Xeon, 2 cores; a
passive wait policy fixes that but halves the speed on an idle machine: docs/benchmarks.md). So
for algorithms that prefer several threads, auto times a few updates with one thread and with
several now and then, and keeps the faster. Under load a probe costs about one slow update."""
from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from threadpoolctl import threadpool_limits

log = logging.getLogger("rl_runner")

PROBE_UPDATES = 3  # updates timed per thread count in a probe (their median counts)
FIRST_INTERVAL = 5.0  # seconds between probes at first; doubled while the choice holds
MAX_INTERVAL = 60.0
GIVE_UP = 2.0  # a multi-thread update this many times the one-thread median ends the probe


def set_threads(n: int) -> None:
    """torch's threads and numpy's BLAS threads (the on-policy kernels, GAE) to `n`."""
    torch.set_num_threads(n)
    threadpool_limits(n, user_api="blas")


class ThreadTuner:
    """Runs each update with the thread count that measured fastest at the last probe.

    A probe times PROBE_UPDATES updates on one thread, then up to as many on `most` threads
    (stopping at the first that is GIVE_UP times slower), and keeps the faster. Probes come
    FIRST_INTERVAL seconds apart, the interval doubling up to MAX_INTERVAL while the choice
    stays the same. For sac with Box actions the thread count changes the updates' last bits,
    so a run whose count switched is not bit-for-bit reproducible (README, Speed)."""

    def __init__(self, most: int, clock: Callable[[], float] = time.perf_counter):
        self.most, self.clock = most, clock
        self.current = self.chosen = most
        self.interval = FIRST_INTERVAL
        self.next_probe = 0.0  # probe at the first update
        self.queue: list[int] = []
        self.times: dict[int, list[float]] = {}

    def run(self, update: Callable[..., Any], *args) -> Any:
        """`update(*args)`, timed when a probe is under way."""
        if not self.queue and self.clock() >= self.next_probe:
            self.queue = [1] * PROBE_UPDATES + [self.most] * PROBE_UPDATES
            self.times = {1: [], self.most: []}
        if not self.queue:
            return update(*args)
        n = self.queue.pop(0)
        if n != self.current:
            set_threads(n)
            self.current = n
        start = self.clock()
        result = update(*args)
        seconds = self.clock() - start
        self.times[n].append(seconds)
        if n == self.most and seconds > GIVE_UP * statistics.median(self.times[1]):
            self.queue.clear()  # under load: one slow update says enough
        if not self.queue:
            self._choose()
        return result

    def _choose(self) -> None:
        medians = {n: statistics.median(t) for n, t in self.times.items() if t}
        best = min(medians, key=medians.get)
        previous = self.chosen
        self.interval = min(MAX_INTERVAL, self.interval * 2) if best == previous \
            else FIRST_INTERVAL
        if best != previous:
            log.info("torch threads: %d (an update took %s)", best, ", ".join(
                f"{1e3 * m:.1f} ms on {n}" for n, m in sorted(medians.items())))
        self.chosen = best
        if best != self.current:
            set_threads(best)
            self.current = best
        self.next_probe = self.clock() + self.interval
