"""Shared helpers for the rl-runner tests: run the CLI, compose the real config, read run output.

Budgets are tiny on purpose (the suite shares 2 CPU cores); learning checks are marked `slow`.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_module
from omegaconf import DictConfig

# small networks: one thread is fastest and does not fight other processes for the 2 cores
torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "integration: builds wheels, starts clusters or many processes; `make test` "
        "runs them, `pytest -m 'not slow and not integration'` is the quick edit-test loop")


REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RL_RUN = BIN / "rl-run"

# overrides that keep a run short and quiet
FAST = ["trainer.progress=false", "trainer.eval_episodes=2"]

# keys DESIGN.md fixes for results.json
RESULT_KEYS = {"algo", "env", "env_id", "seed", "env_steps", "grad_steps", "wall_seconds", "sps",
               "eval_return_mean", "eval_return_std", "eval_episodes", "best_eval_return_mean",
               "status", "versions"}
VERSION_KEYS = {"python", "torch", "gymnasium", "rl_runner"}
# results.json numbers that must not depend on timing or location
NUMBERS = ("env_steps", "grad_steps", "eval_return_mean", "eval_return_std", "eval_episodes",
           "best_eval_return_mean")


def cli_env(extra_pythonpath: Path | None = None) -> dict[str, str]:
    """The environment for a CLI subprocess: no HYDRA_FULL_ERROR, optional import path."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    if extra_pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(extra_pythonpath), env.get("PYTHONPATH")) if p)
    return env


def run_cli(args: list[str], tmp_path: Path, *, run_dir: Path | None = None,
            cwd: Path | None = None, timeout: float = 180,
            pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    """Run `rl-run ARGS` in a subprocess (cwd tmp_path) and capture its output.

    A training invocation gets hydra.run.dir=<run_dir or tmp_path/run> unless it names its own or
    resumes, so that nothing is written outside tmp_path.
    """
    args = [str(a) for a in args]
    is_flag = any(a.startswith("-") for a in args)
    names_dir = any(a.startswith(("hydra.run.dir=", "resume=")) for a in args)
    if not is_flag and not names_dir:
        args.append(f"hydra.run.dir={run_dir or tmp_path / 'run'}")
    return subprocess.run([str(RL_RUN), *args], cwd=cwd or tmp_path, env=cli_env(pythonpath),
                          capture_output=True, text=True, timeout=timeout)


def compose(overrides: list[str] | None = None) -> DictConfig:
    """The composed train config, as the CLI would build it (without the hydra node)."""
    with initialize_config_module(config_module="rl_runner.conf", version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides or []))


def read_results(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


def read_scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a run's TensorBoard directory, as TensorBoard itself reads it back."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def count_summary_tags(tb_dir: Path, tag: str) -> int:
    """How many summary values named `tag` were written over all event files of a run."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    n = 0
    for path in sorted(Path(tb_dir).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            n += sum(1 for v in event.summary.value if v.tag == tag)
    return n


def error_line(proc: subprocess.CompletedProcess) -> str:
    """Assert the fixed bad-input contract (exit 2, one stderr line, no traceback); return it."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\n" \
                                 f"stderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert len(lines) == 1, f"expected one stderr line, got:\n{proc.stderr}"
    assert "rl-run: error:" in lines[0], lines[0]
    return lines[0]


def run_error_line(proc: subprocess.CompletedProcess) -> str:
    """A run that failed while training: exit 2, no traceback, its progress lines and then
    exactly one `rl-run: error:` line, the last; returns it."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, f"exit {proc.returncode}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    errors = [ln for ln in lines if "error" in ln.lower() or "warning" in ln.lower()]
    assert errors == [lines[-1]] and lines[-1].startswith("rl-run: error:"), proc.stderr
    return lines[-1]


@pytest.fixture
def cli(tmp_path):
    """run_cli bound to this test's tmp_path."""
    def _run(args, **kwargs):
        return run_cli(args, tmp_path, **kwargs)
    return _run


# a short ppo CartPole run: its checkpoints feed the rl-eval, rl-collect and dataset tests
PPO_FAST = ["algo=ppo", "env=cartpole", "env.n_envs=8", "algo.n_steps=32", "algo.batch_size=256",
            *FAST, "trainer.total_steps=2048", "trainer.eval_every=1024"]


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory) -> Path:
    """A trained run directory, one per test module (its tests may write into it)."""
    from rl_runner.trainer import train

    run_dir = tmp_path_factory.mktemp("cartpole") / "run"
    train(compose(PPO_FAST), run_dir)
    return run_dir


# a short, complete rl-run of ppo on CartPole: the run directory the resume/refusal tests copy
SHORT_RUN = ["algo=ppo", "env=cartpole", *FAST, "trainer.total_steps=512", "algo.n_steps=32",
             "env.n_envs=4", "algo.batch_size=64"]


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """One real, short, completed rl-run for the whole session; tests copy it before touching
    it (rl-run's own resume and refusal paths need the .hydra/ folder that only Hydra writes)."""
    base = tmp_path_factory.mktemp("finished")
    proc = run_cli([*SHORT_RUN, f"hydra.run.dir={base / 'run'}"], base)
    assert proc.returncode == 0, proc.stderr
    return base / "run"


@pytest.fixture
def refused_in_process(monkeypatch, capsys, tmp_path):
    """rl-run's main() called in this process (cwd tmp_path) with arguments it must refuse before
    Hydra starts: exit 2, 1 to `max_lines` stderr lines, the first `rl-run: error: ...`; returns
    them joined. Hydra's main is replaced by a test failure, so a case that got past the checks
    fails instead of running. Use it for argument checks; a fresh `rl-run` process per case
    would only pay the torch, Hydra and gymnasium imports again."""
    from rl_runner import cli as rl_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def reached_hydra():
        pytest.fail("the arguments reached Hydra's main: nothing refused them before")

    monkeypatch.setattr(rl_cli, "hydra_main", reached_hydra)

    def run(args: list[str], max_lines: int = 1) -> str:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["rl-run", *map(str, args)])
        with pytest.raises(SystemExit) as e:
            rl_cli.main()
        assert e.value.code == 2
        out, err = capsys.readouterr()
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert "Traceback" not in out + err, err
        assert 1 <= len(lines) <= max_lines, err
        assert lines[0].startswith("rl-run: error: "), lines[0]
        return " ".join(lines)

    return run


def tool_error(capsys, main, argv: list[str], prog: str) -> str:
    """Run a KEY=VALUE tool's main(argv), expecting exit 2 and one `prog: error:` line."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{prog}: error: ")
    return err[0]
