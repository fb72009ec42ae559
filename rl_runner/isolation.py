"""A sweep job's training in a child process of its own, so that a job that dies hard (segfault,
os._exit, out-of-memory kill) fails alone instead of ending the sweep, and so that training stops
when the processes waiting for it die.

The job's process forks and waits. The child stops like SIGTERM (the trainer saves last.pt) when
its parent dies, or the sweep's main process when that started the parent (joblib's workers live
on as orphans). A SIGINT/SIGTERM for the parent is passed on to the child unless the child got it
too: Ctrl-C reaches the whole process group, and a second signal makes the trainer quit unsaved.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
import traceback
from typing import Callable

SWEEP_PID = "RL_RUNNER_SWEEP_PID"  # the sweep's main process (set by sweeps.SweepCallbacks)
STOPS = {signal.SIGINT, signal.SIGTERM}
# after its parent died: how long the child may take to save last.pt before it kills itself
GRACE_SECONDS = 60.0
# how long a stop signal the parent passes on may take to show as one the child got itself
SAME_SIGNAL_SECONDS = 0.5
HINTS = {signal.SIGKILL: "out of memory, or killed from outside",
         signal.SIGSEGV: "a crash in native code", signal.SIGBUS: "a crash in native code",
         signal.SIGILL: "a crash in native code", signal.SIGFPE: "a crash in native code",
         signal.SIGABRT: "an abort in native code"}


def run_isolated(fn: Callable[[], int]) -> tuple[int, set[int]]:
    """Run fn() in a forked child and wait for it to end, whatever signals come meanwhile.

    Returns (the child's exit code: fn's return value, or minus the signal that killed it; the
    stop signals this process got while waiting). Call it before this process runs torch ops:
    forking after torch started its OpenMP threads is unsafe."""
    sweep_pid = _sweep_parent()
    to_child_r, to_child_w = os.pipe()
    received: set[int] = set()

    def pass_on(signum, _frame):
        received.add(signum)
        try:
            os.write(to_child_w, bytes([signum]))
        except OSError:  # the child has ended
            pass

    # a stop signal waits until this side's handler is in place, then is passed on
    signal.pthread_sigmask(signal.SIG_BLOCK, STOPS)
    # fork, not spawn: the job's config and Hydra's logging set-up come along as they are
    child = multiprocessing.get_context("fork").Process(
        target=_child, args=(fn, to_child_r, to_child_w, sweep_pid), name="rl-runner-training")
    previous = {}
    try:
        child.start()
        if threading.current_thread() is threading.main_thread():
            previous = {sig: signal.signal(sig, pass_on) for sig in STOPS}
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)
        child.join()  # its waitpid is retried after each handler (PEP 475)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)
        os.close(to_child_r)
        os.close(to_child_w)
    return child.exitcode, received


def describe_exit(code: int) -> str:
    """results.json's error for a training process that ended without recording its outcome."""
    if code >= 0:
        return f"the training process exited with code {code} without writing results"
    sig = signal.Signals(-code)
    hint = HINTS.get(sig)
    return f"the training process was killed by signal {sig.name}" + (f" ({hint})" if hint else "")


def _sweep_parent() -> int | None:
    """The sweep's main process if it started this one (a joblib worker), else None."""
    pid = os.environ.get(SWEEP_PID, "")
    return int(pid) if pid.isdigit() and int(pid) == os.getppid() else None


def _child(fn: Callable[[], int], from_parent: int, to_child: int,
           sweep_pid: int | None) -> None:
    """The child's whole life: watch the parents, run fn, exit with its return value."""
    os.close(to_child)  # the parent's end: EOF must come when the parent dies
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _start_watchdog(from_parent, sweep_pid)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOPS)
        code = fn()
    except KeyboardInterrupt:
        code = 130
    except Exception:  # noqa: BLE001 - fn records its own failures; this is a last resort
        traceback.print_exc()
    finally:
        logging.shutdown()  # flush train.log
    sys.exit(code)


def _start_watchdog(from_parent: int, sweep_pid: int | None) -> None:
    """A thread that stops this child when a parent dies or passes on a stop signal."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    # Python writes each signal it catches to this fd: the stop signals this child got itself
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    parents = [from_parent]  # EOF when the parent has died
    if sweep_pid is not None and hasattr(os, "pidfd_open"):
        try:
            parents.append(os.pidfd_open(sweep_pid))  # readable once that process has ended
        except OSError:  # already gone
            os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=_watch, args=(wake_r, from_parent, parents), daemon=True,
                     name="rl-runner-watchdog").start()


def _watch(wake_r: int, from_parent: int, parents: list[int]) -> None:
    """The watchdog's loop: pass on the parent's stop signals, then stop when a parent died."""
    seen: set[int] = set()  # stop signals this child got

    def drain(timeout: float = 0.0) -> None:
        if select.select([wake_r], [], [], timeout)[0]:
            seen.update(os.read(wake_r, 512))

    while True:
        ready = select.select([wake_r, *parents], [], [])[0]
        drain()
        passed_on = os.read(from_parent, 64) if from_parent in ready else b""
        if passed_on:
            drain(SAME_SIGNAL_SECONDS)  # the same Ctrl-C may reach this child a moment later
            if not seen & STOPS:
                os.kill(os.getpid(), passed_on[0])
                seen.add(passed_on[0])
        elif from_parent in ready or len(parents) > 1 and parents[1] in ready:
            break  # a parent died
    if not seen & STOPS:
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_SECONDS)  # nobody waits for this child any more: it must not linger
    os.kill(os.getpid(), signal.SIGKILL)
