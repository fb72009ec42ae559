"""How torch's worker threads wait: without spinning, so that `trainer.torch_threads=auto` holds up
on a loaded machine.

The torch CPU wheel runs its parallel regions (and MKL's) on GNU OpenMP (libgomp, shipped in
torch/lib). Left to its defaults, libgomp spins (GOMP_SPINCOUNT=300000 busy-wait iterations) at
every barrier and between regions before it sleeps. A SAC update is some hundred small parallel
regions; with another process on one of 2 cores, the spinning threads eat the time slices the
lagging thread needs, and 2 threads ran an update 10-40x slower than 1 (docs/benchmarks.md,
"torch threads under load"). With OMP_WAIT_POLICY=PASSIVE (spin count 0) threads sleep on a
futex as soon as they wait: 2 threads stay at least as fast as 1 under load and about as fast as
spinning on an idle machine. The wait policy does not change how work is split, so a run computes
the same bits with either policy; the thread count `auto` picks is the same as before.

libgomp reads the variable once, when it is loaded (with `import torch`), so `rl_runner/__init__`
sets it before anything imports torch. A user's own OMP_WAIT_POLICY, GOMP_SPINCOUNT or
KMP_BLOCKTIME is left alone.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping

# variables that decide how OpenMP threads wait (KMP_BLOCKTIME: Intel's libiomp, should a build
# use it); any one set by the user means we leave the policy to them
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")

# what `passive_openmp_wait` found when rl_runner was imported:
# "set" (we set OMP_WAIT_POLICY=PASSIVE), "user" (a wait variable was set already),
# "too-late" (torch was imported before rl_runner; its threads spin by default)
wait_state = "unset"


def passive_openmp_wait(environ: MutableMapping[str, str] | None = None,
                        modules: Mapping[str, object] | None = None) -> str:
    """Set OMP_WAIT_POLICY=PASSIVE unless the user set a wait variable or torch is loaded.

    Returns "set", "user" or "too-late" (torch, hence libgomp, already loaded: setting the
    variable now would only reach child processes, so nothing is set)."""
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if any(var in environ for var in WAIT_VARS):
        return "user"
    if "torch" in modules:
        return "too-late"
    environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return "set"


def spin_warning(threads: int) -> str | None:
    """A log line when `threads` > 1 run with libgomp's spinning default (torch imported before
    rl_runner, no wait variable set), else None."""
    if threads <= 1 or wait_state != "too-late":
        return None
    return (f"{threads} torch threads whose OpenMP runtime spin-waits (torch was imported before "
            "rl_runner): on a loaded machine that can be many times slower than 1 thread; set "
            "OMP_WAIT_POLICY=PASSIVE in the environment or import rl_runner first")
