"""Sweeps (rl-run -m): failed jobs recorded, parallel launchers, Optuna, summaries."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rl_runner.sweeps import parallel_jobs, prepare_ray
from tests.conftest import FAST, REPO, RL_RUN, cli_env, read_results, run_cli

# 8 envs x 32 steps = 256 env steps per update; NaNAfter3PPO turns NaN in its 4th (step 1024)
SHORT = ["env=cartpole", *FAST, "trainer.total_steps=2048", "trainer.eval_every=2048"]
TINY = ["algo=ppo", "algo.n_steps=32", "algo.batch_size=256", *SHORT]
NAN_PPO = "tests.helpers.nan_algo.NaNAfter3PPO"
CRASH_PPO = "tests.helpers.nan_algo.CrashAfter3PPO"


def sweep(tmp_path: Path, args: list[str], timeout: float = 240):
    sweep_dir = tmp_path / "sweep"
    proc = run_cli(["-m", *args, f"hydra.sweep.dir={sweep_dir}"], tmp_path, timeout=timeout,
                   pythonpath=REPO)
    return proc, sweep_dir


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()),
                  key=lambda p: int(p.name.split("_")[0]))


def md_job_rows(sweep_dir: Path) -> dict[str, dict[str, str]]:
    """summary.md's per-job table, parsed back: {job: {column: cell}}."""
    lines = (sweep_dir / "summary.md").read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| job |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        cells = dict(zip(header, (c.strip() for c in ln.strip("|").split("|"))))
        rows[cells["job"]] = cells
    return rows


def check_summary_matches_results(sweep_dir: Path) -> dict[str, dict[str, str]]:
    """Every job's row in summary.md and summary.csv agrees with its results.json."""
    rows = md_job_rows(sweep_dir)
    with open(sweep_dir / "summary.csv", newline="") as f:
        csv_rows = {r["job"]: r for r in csv.DictReader(f) if r["kind"] == "job"}
    runs = [job / name for job in job_dirs(sweep_dir)
            for name in read_results(job).get("runs", ["."])]  # a repeat job: one row per seed
    for run in runs:
        name = str(run.relative_to(sweep_dir))
        res = read_results(run)
        row, csv_row = rows[name], csv_rows[name]
        assert row["status"] == csv_row["status"] == res["status"]
        assert int(row["seed"]) == res["seed"]
        assert int(row["steps"]) == int(csv_row["env_steps"]) == res["env_steps"]
        if res["eval_return_mean"] is None:
            assert row["final return"] == csv_row["eval_return_mean"] == ""
        else:
            assert float(row["final return"]) == pytest.approx(res["eval_return_mean"], abs=0.05)
            assert float(csv_row["eval_return_mean"]) == res["eval_return_mean"]
    assert set(rows) == {str(run.relative_to(sweep_dir)) for run in runs}
    return rows


JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
RAY = "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
SUBMITIT = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher"


@pytest.mark.parametrize("launcher, expected", [
    ({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"}, 1),
    ({"_target_": JOBLIB, "n_jobs": -1}, 8),
    ({"_target_": JOBLIB, "n_jobs": 3}, 3),
    ({"_target_": JOBLIB, "n_jobs": -2}, 7),
    ({"_target_": RAY, "ray": {"init": {}, "remote": {"num_cpus": 2}}}, 4),
    ({"_target_": RAY, "ray": {"init": {}, "remote": {}}}, 8),
    ({"_target_": SUBMITIT, "cpus_per_task": None}, 8),
    ({"_target_": SUBMITIT, "cpus_per_task": 4}, 2),
])
def test_jobs_running_at_once_per_launcher(launcher, expected):
    assert parallel_jobs(OmegaConf.create(launcher), cores=8) == expected


def test_ray_settings_mended_before_the_launcher_starts(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "")  # restored (removed) after the test
    monkeypatch.delenv("RAY_AUTH_MODE")
    joining = OmegaConf.create({"_target_": RAY, "ray": {"init": {"address": "auto"}}})
    OmegaConf.set_readonly(joining, True)  # as Hydra hands it over
    prepare_ray(joining)
    init = joining.ray.init
    assert "object_store_memory" in init and init.object_store_memory is None
    assert "RAY_AUTH_MODE" not in os.environ  # a real cluster keeps its own auth
    prepare_ray(OmegaConf.create({"_target_": RAY, "ray": {"init": {"address": None}}}))
    assert os.environ["RAY_AUTH_MODE"] == "disabled"


def test_a_failed_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    proc, sweep_dir = sweep(tmp_path, [*TINY, f"algo._target_=rl_runner.algos.ppo.PPO,{NAN_PPO}",
                                       "seed=0,1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_dirs(sweep_dir)
    assert len(jobs) == 4
    statuses = [read_results(j)["status"] for j in jobs]
    assert statuses == ["completed", "completed", "failed", "failed"]
    for job in jobs[2:]:
        assert "NaN" in read_results(job)["error"] and "1024" in read_results(job)["error"]
    rows = check_summary_matches_results(sweep_dir)
    assert "NaN" in rows[jobs[3].name]["error"]
    head = (sweep_dir / "summary.md").read_text().splitlines()[0]
    assert "4 jobs" in head and "2 completed" in head and "2 failed" in head


def test_a_job_failing_before_training_is_recorded(tmp_path):
    proc, sweep_dir = sweep(tmp_path, [*TINY, "algo.lr=-1,0.001"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, second = job_dirs(sweep_dir)
    res = read_results(first)
    assert res["status"] == "failed" and res["error"] == "algo.lr=-1 must not be negative"
    assert res["algo"] == "ppo" and res["env_id"] == "CartPole-v1" and res["env_steps"] == 0
    assert read_results(second)["status"] == "completed"
    check_summary_matches_results(sweep_dir)


def test_a_repeat_job_stops_at_its_first_failed_seed(tmp_path):
    proc, sweep_dir = sweep(tmp_path, [*TINY, f"algo._target_={NAN_PPO}", "repeats=3",
                                       "seed=5"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (job,) = job_dirs(sweep_dir)
    res = read_results(job)
    assert res["status"] == "failed" and res["runs"] == ["s5"] and "NaN" in res["error"]
    assert res["eval_return_mean"] is None
    assert read_results(job / "s5")["status"] == "failed" and not (job / "s6").exists()
    assert md_job_rows(sweep_dir)[f"{job.name}/s5"]["status"] == "failed"


def test_fail_fast_stops_the_sweep_at_the_first_failure(tmp_path):
    proc, sweep_dir = sweep(tmp_path, [*TINY, "trainer.fail_fast=true", "algo.lr=-1,0.001"])
    assert proc.returncode != 0
    jobs = job_dirs(sweep_dir)
    assert [read_results(j)["status"] for j in jobs] == ["failed"]
    assert md_job_rows(sweep_dir)[jobs[0].name]["status"] == "failed"


def log_span(job: Path) -> tuple[datetime, datetime]:
    """When a job's train.log starts and ends."""
    stamps = [datetime.strptime(ln[1:24], "%Y-%m-%d %H:%M:%S,%f")
              for ln in (job / "train.log").read_text().splitlines() if ln.startswith("[20")]
    return stamps[0], stamps[-1]


@pytest.mark.integration  # joblib worker processes
def test_joblib_runs_jobs_in_parallel_with_progress_lines(tmp_path):
    proc, sweep_dir = sweep(tmp_path, [*SHORT, "algo=ppo,pg", "seed=0,1",
                                       "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                                       "trainer.progress=true", "trainer.total_steps=8192",
                                       "trainer.eval_every=8192"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_dirs(sweep_dir)
    assert [j.name for j in jobs] == ["0_ppo_cartpole_s0", "1_ppo_cartpole_s1",
                                      "2_pg_cartpole_s0", "3_pg_cartpole_s1"]
    assert all(read_results(job)["status"] == "completed" for job in jobs)
    spans = [log_span(job) for job in jobs]  # a second each; the workers start ~1 s apart
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1:])
    # no progress bars from parallel jobs: each line names its job
    assert "step/s" not in proc.stderr
    assert "[2_pg_cartpole_s0] done: " in proc.stderr
    check_summary_matches_results(sweep_dir)


def test_a_sweep_job_on_two_threads_runs_its_updates(tmp_path):
    # rl-run's checks build the algorithm before Hydra forks the job's training process: an
    # OpenMP team started then left the job hanging at its first two-thread product
    proc, sweep_dir = sweep(tmp_path, ["algo=sac", "env=pendulum", "seed=0", *FAST,
                                       "trainer.total_steps=120", "algo.learning_starts=100",
                                       "trainer.torch_threads=2"], timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(job_dirs(sweep_dir)[0])
    assert results["status"] == "completed" and results["grad_steps"] > 0


@pytest.mark.integration  # joblib worker processes; the rule itself: test_jobs_running_at_once_...
def test_parallel_jobs_share_the_cores(tmp_path):
    """sac with torch_threads=auto takes every core alone; two at once take half each."""
    cores = len(os.sched_getaffinity(0))
    proc, sweep_dir = sweep(tmp_path, ["algo=sac", "env=pendulum", "seed=0,1", *FAST,
                                       "trainer.total_steps=200", "algo.learning_starts=100",
                                       "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [read_results(j)["torch_threads"] for j in job_dirs(sweep_dir)] == \
        [max(1, cores // 2)] * 2


@pytest.mark.integration  # two Optuna studies on sqlite
def test_optuna_averages_seeds_per_trial_and_the_study_resumes(tmp_path):
    db = tmp_path / "study" / "ppo.db"
    # 2048: the preset's largest rollout (algo.n_steps 256 x 8 envs); a smaller budget is refused
    args = ["hparams_search=ppo_cartpole", *FAST[1:], "repeats=2",
            "trainer.total_steps=2048", "trainer.eval_every=2048",
            f"hydra.sweeper.storage=sqlite:///{db}"]
    proc, sweep_dir = sweep(tmp_path, [*args, "hydra.sweeper.n_trials=2"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = job_dirs(sweep_dir)
    assert len(jobs) == 2
    for job in jobs:
        res = read_results(job)
        runs = [read_results(job / r) for r in res["runs"]]
        assert [r["seed"] for r in runs] == [0, 1]
        assert res["eval_return_mean"] == pytest.approx(
            sum(r["eval_return_mean"] for r in runs) / 2)
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert best.best_value == max(read_results(j)["eval_return_mean"] for j in jobs)
    check_summary_matches_results(sweep_dir)
    assert "Sweep: `rl-run -m hparams_search=ppo_cartpole" in (sweep_dir / "summary.md").read_text()

    import optuna
    resumed = tmp_path / "again"
    proc = run_cli(["-m", *args, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={resumed}"],
                   tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="ppo_cartpole", storage=f"sqlite:///{db}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert study.trials[2].value == read_results(resumed / "0_ppo_cartpole_s0")["eval_return_mean"]


@pytest.mark.integration  # an Optuna study on sqlite
def test_a_failed_optuna_trial_is_marked_failed_and_the_search_goes_on(tmp_path):
    db = tmp_path / "study.db"
    proc, sweep_dir = sweep(tmp_path, ["hparams_search=ppo_cartpole", *FAST[1:], "repeats=1",
                                       f"algo._target_={NAN_PPO}", "trainer.total_steps=2048",
                                       "hydra.sweeper.n_trials=2",
                                       f"hydra.sweeper.storage=sqlite:///{db}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    import optuna
    trials = optuna.load_study(study_name="ppo_cartpole", storage=f"sqlite:///{db}").trials
    # NaNAfter3PPO fails in its 4th update; the sampler (seed 0) gives trial 1 n_steps=256, a
    # single update in the budget, so it completes: the search went on past the failure
    assert [t.params["algo.n_steps"] for t in trials] == [32, 256]
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert [read_results(j)["status"] for j in job_dirs(sweep_dir)] == ["failed", "completed"]
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert best.best_value == trials[1].value
    check_summary_matches_results(sweep_dir)


def test_fail_fast_stops_at_a_crash_too(tmp_path):
    proc, sweep_dir = sweep(tmp_path, [*TINY, "trainer.fail_fast=true",
                                       f"algo._target_={CRASH_PPO},rl_runner.algos.ppo.PPO"])
    assert proc.returncode == 1, proc.stderr[-3000:]
    (job,) = job_dirs(sweep_dir)
    assert read_results(job)["error"] == "RuntimeError: boom in update 4"
    assert "Traceback" in (job / "train.log").read_text()  # a bug: the trace is kept
    assert md_job_rows(sweep_dir)[job.name]["status"] == "failed"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_the_sweep_with_a_summary(tmp_path, sig):
    """Ctrl-C (or a scheduler's SIGTERM) to the sweep: exit 130 (143), as for a single run."""
    sweep_dir = tmp_path / "sweep"
    proc = subprocess.Popen([str(RL_RUN), "-m", "algo=ppo", "env=cartpole", "seed=0,1",
                             "trainer.progress=false", "trainer.total_steps=10000000",
                             "trainer.checkpoint_every=1024",
                             f"hydra.sweep.dir={sweep_dir}"], cwd=tmp_path,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(sweep_dir.glob("0_*/checkpoints/last.pt")):
        time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig.value, err[-3000:]
    (job,) = job_dirs(sweep_dir)  # the second job never started
    assert read_results(job)["status"] == "interrupted"
    assert md_job_rows(sweep_dir)[job.name]["status"] == "interrupted"
    assert "sweep interrupted" in err


def test_an_existing_sweep_dir_is_refused(tmp_path, refused_in_process):
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "multirun.yaml").write_text("earlier\n")
    line = refused_in_process(["-m", *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert "already holds files" in line
    assert (tmp_path / "sweep" / "multirun.yaml").read_text() == "earlier\n"


def test_a_repeat_jobs_runs_resume_one_by_one(tmp_path, refused_in_process):
    proc, sweep_dir = sweep(tmp_path, [*TINY, "repeats=2", "seed=3"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    (job,) = job_dirs(sweep_dir)
    line = refused_in_process([f"resume={job}"])
    assert f"resume={job / 's4'}" in line
    proc = run_cli([f"resume={job / 's4'}", "trainer.total_steps=2560"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = read_results(job / "s4")
    assert res["seed"] == 4 and res["env_steps"] == 2560 and res["status"] == "completed"


@pytest.mark.parametrize("override, extra", [("hydra/launcher=joblib", "joblib"),
                                             ("hydra/launcher=submitit_slurm", "submitit"),
                                             ("hparams_search=ppo_cartpole", "optuna")])
def test_a_missing_plugin_names_its_extra(monkeypatch, override, extra):
    import importlib.util

    from rl_runner import cli
    from rl_runner.errors import UserError

    real = importlib.util.find_spec

    def find_spec(name, *args):  # as if no sweep plugin were installed
        return None if name.startswith("hydra_plugins") else real(name, *args)
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(UserError, match=rf"needs the {extra} extra: .*'rl-runner\[{extra}\]'"):
        cli.prepare_argv(["-m", override])


def test_hparams_search_without_multirun_is_refused(refused_in_process):
    line = refused_in_process(["hparams_search=ppo_cartpole"])
    assert "add -m" in line


@pytest.mark.integration  # a Ray cluster, submitit's job processes
@pytest.mark.parametrize("launcher", ["submitit_local", "ray"])
def test_other_launchers_run_and_summarise(tmp_path, monkeypatch, launcher):
    pytest.importorskip(f"hydra_plugins.hydra_{launcher.split('_')[0]}_launcher")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # Ray's token file would land here
    proc, sweep_dir = sweep(tmp_path, [*TINY, "seed=0,1", f"hydra/launcher={launcher}"],
                            timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [read_results(j)["status"] for j in job_dirs(sweep_dir)] == ["completed"] * 2
    check_summary_matches_results(sweep_dir)
    assert not (tmp_path / "home" / ".ray" / "auth_token").exists()
    assert read_results(job_dirs(sweep_dir)[0])["torch_threads"] == 1
