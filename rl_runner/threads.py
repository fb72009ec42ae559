"""trainer.torch_threads=auto under load: keep the thread count that is fastest now, measured.

torch's OpenMP runtime (libgomp) spin-waits at every barrier. With a core taken by another
process, a second torch thread only runs when the scheduler gives it a slice, and a sac update
(256x256 layers) went from 10.5 ms on one thread to 380-450 ms on two (Intel Xeon, 2 cores; a
passive wait policy fixes that but halves the speed on an idle machine: docs/benchmarks.md). So
for algorithms that prefer several threads, auto times a few updates with one thread and with
several now and then, and keeps the faster. Under load a probe costs about one slow update."""
from __future__ import annotations

import ctypes
import logging
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from threadpoolctl import threadpool_limits

log = logging.getLogger("rl_runner")

PROBE_UPDATES = 3  # pairs of updates (one thread, then several) timed in a probe
FIRST_INTERVAL = 5.0  # seconds between probes at first; doubled while the choice holds
MAX_INTERVAL = 60.0
GIVE_UP = 2.0  # a multi-thread update this many times its one-thread pair ends the probe
# the other count must be this many times faster to be switched to. On an idle machine a probe's
# few updates measured one thread 1.16x faster and then two threads 1.57x faster (td3
# halfcheetah, Zen 4, where two threads are ~1.6x faster): 6-14 switches a run, and for some
# layer shapes each switch changes the updates' last bits, so same-seed runs parted ways
SWITCH_MARGIN = 1.3


def set_threads(n: int) -> None:
    """torch's threads to `n`, numpy's BLAS threads to one. numpy's products are the MLP kernels'
    small ones (kernels._bmm sends the big ones to torch), and OpenBLAS splits a matrix between
    its threads, so its last bits changed with their count (a ppo update with 64-dim
    observations); on one thread a ThreadTuner switch leaves the kernels' bits as they were.
    OpenBLAS's default, a thread per core, also made a 256x64 matmul 2x slower while another
    process held a core."""
    torch.set_num_threads(n)
    threadpool_limits(1, user_api="blas")


class ThreadTuner:
    """Runs each update with the thread count the last probe chose.

    A probe runs PROBE_UPDATES pairs of updates, each pair one update on one thread and the next
    on `most` threads (stopping at the first `most` update GIVE_UP times slower than its
    pair's), and switches to the other count only where the median of the pairs' ratios says
    it is SWITCH_MARGIN times faster than the count in use. Pairs of neighbours in time
    compare the counts under the same conditions. Timed as blocks (three updates on one
    count, then three on the other), a probe on a VM whose speed moves from minute to minute
    read 74.7 ms on one thread and 116.9 on two where two threads are ~1.3x faster (dqn
    cartpole, Zen 4), and the run kept one thread. Probes come FIRST_INTERVAL seconds apart, the
    interval doubling up to MAX_INTERVAL while the choice stays the same. For sac with Box
    actions the thread count changes the updates' last bits, so a run whose count switched is
    not bit-for-bit reproducible (README, Speed)."""

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
            self.queue = [1, self.most] * PROBE_UPDATES
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
        if n == self.most and seconds > GIVE_UP * self.times[1][-1]:
            self.queue.clear()  # under load: one slow update says enough
        if not self.queue:
            self._choose()
        return result

    def _choose(self) -> None:
        # how many times slower `most` threads ran than one, pair by pair
        ratio = statistics.median(m / max(one, 1e-12)
                                  for one, m in zip(self.times[1], self.times[self.most]))
        previous = self.chosen
        if previous == self.most:
            best = 1 if ratio > SWITCH_MARGIN else previous
        else:
            best = self.most if ratio * SWITCH_MARGIN < 1.0 else previous
        self.interval = min(MAX_INTERVAL, self.interval * 2) if best == previous \
            else FIRST_INTERVAL
        if best != previous:
            medians = {n: statistics.median(t) for n, t in self.times.items() if t}
            log.info("torch threads: %d (an update took %s)", best, ", ".join(
                f"{1e3 * m:.1f} ms on {n}" for n, m in sorted(medians.items())))
        self.chosen = best
        if best != self.current:
            set_threads(best)
            self.current = best
        self.next_probe = self.clock() + self.interval


def usable_cores() -> int:
    """The CPUs this process may run on (a container's or taskset's limit, not the host's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def keep_freed_memory() -> None:
    """Keep freed blocks in the heap instead of handing them back to the OS (glibc only).

    An update allocates and frees ~15 MB of activations. glibc hands large blocks and the heap top
    back to the OS, so the next update page-faults them in again: hundreds to thousands of minor
    faults per SAC update (256x256 layers), a large share of the update's time (measured by
    scripts/sac_update_speed.py; docs/benchmarks.md), ~0 faults with these settings.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return
    mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: only blocks over 32 MB get their own mapping
    mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GB of free heap top


def choose_threads(setting: int | str, max_threads: int,
                   algo=None) -> tuple[int, ThreadTuner | None]:
    """trainer.torch_threads, or with `auto` the algorithm's choice for its matmul sizes; set for
    torch (numpy's BLAS: one), with a ThreadTuner where auto chose several.

    Called before the networks are built (`auto`: one thread, so that initial weights do not
    depend on the machine's cores: orthogonal init's QR differs in its last bits with the thread
    count) and again after, with the algorithm."""
    threads = setting
    if threads == "auto":
        threads = 1 if algo is None else algo.preferred_threads(max_threads)
    elif algo is not None and threads > max_threads < usable_cores():
        log.warning("trainer.torch_threads=%d: more than this job's share of the cores (%d) "
                    "while other jobs of the sweep run; auto picks within it",
                    threads, max_threads)
    set_threads(threads)  # numpy's BLAS: one thread (set_threads says why)
    # auto with several threads: re-measured now and then, since another process taking a core
    # makes several threads far slower than one
    tuned = algo is not None and threads > 1 and setting == "auto"
    return threads, ThreadTuner(threads) if tuned else None
