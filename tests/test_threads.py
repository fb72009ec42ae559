"""rl_runner.threads: torch's OpenMP threads wait passively unless the user chose otherwise."""
from __future__ import annotations

import os
import subprocess
import sys

from rl_runner import threads


def test_sets_a_passive_wait_before_torch_loads():
    environ: dict[str, str] = {"PATH": "/bin"}
    assert threads.passive_openmp_wait(environ, modules={}) == "set"
    assert environ == {"PATH": "/bin", "OMP_WAIT_POLICY": "PASSIVE"}


def test_leaves_the_users_wait_variables_alone():
    for var, value in [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "10000"),
                       ("KMP_BLOCKTIME", "200")]:
        environ = {var: value}
        assert threads.passive_openmp_wait(environ, modules={}) == "user"
        assert environ == {var: value}


def test_sets_nothing_once_torch_is_loaded():
    environ: dict[str, str] = {}
    assert threads.passive_openmp_wait(environ, modules={"torch": object()}) == "too-late"
    assert environ == {}


def test_spin_warning_only_for_several_threads_that_spin(monkeypatch):
    monkeypatch.setattr(threads, "wait_state", "too-late")
    assert threads.spin_warning(1) is None
    assert "OMP_WAIT_POLICY=PASSIVE" in threads.spin_warning(2)
    for state in ("set", "user"):
        monkeypatch.setattr(threads, "wait_state", state)
        assert threads.spin_warning(2) is None


def test_rl_runs_entry_point_gives_torchs_openmp_a_passive_wait():
    """What libgomp itself read when torch loaded, imported the way `rl-run` imports it: a spin
    count of 0 (its default, which spins, is 300000). This process already set the variable,
    so the child starts without it."""
    env = {k: v for k, v in os.environ.items() if k not in threads.WAIT_VARS}
    env["OMP_DISPLAY_ENV"] = "VERBOSE"  # libgomp prints its settings as it loads
    out = subprocess.run([sys.executable, "-c", "import rl_runner.cli, torch; "
                          "import rl_runner.threads as t; print(t.wait_state)"],
                         capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split() == ["set"]
    assert "GOMP_SPINCOUNT = '0'" in out.stderr, out.stderr[-2000:]
