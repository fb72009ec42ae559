"""The training loop end to end: run directory, results.json, TensorBoard tags, checkpoints."""
from __future__ import annotations

import math
import os
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from threadpoolctl import threadpool_info, threadpool_limits

from rl_runner.trainer import train, usable_cores
from tests.conftest import (FAST, NUMBERS, REPO, RESULT_KEYS, VERSION_KEYS, compose,
                            count_summary_tags, read_results, read_scalars, run_cli)

COMMON_TAGS = {"charts/episodic_return", "charts/episodic_length", "charts/SPS",
               "charts/learning_rate", "eval/return_mean", "eval/return_std", "eval/length_mean",
               "losses/policy_loss", "losses/value_loss", "losses/entropy"}
PPO_TAGS = {"losses/approx_kl", "losses/clipfrac"}
CHECKPOINT_KEYS = {"format_version", "algo", "counters", "rng", "env", "feeder", "config"}

# (name, overrides, total steps): tiny budgets, each several rollouts and evaluations long
RUNS = {
    "ppo_cartpole": (["algo=ppo", "env=cartpole", "env.n_envs=8", "algo.n_steps=32"], 2048),
    "pg_cartpole": (["algo=pg", "env=cartpole", "env.n_envs=8", "algo.n_steps=64"], 2048),
    "ppo_pendulum": (["algo=ppo", "env=pendulum", "env.n_envs=4", "algo.n_steps=64"], 1024),
}


@pytest.fixture(scope="module", params=sorted(RUNS))
def cli_run(request, tmp_path_factory):
    """One short CLI run per algorithm/action-space; yields (name, run dir, total_steps)."""
    name = request.param
    overrides, total = RUNS[name]
    base = tmp_path_factory.mktemp(name)
    proc = run_cli([*overrides, *FAST, f"trainer.total_steps={total}", "trainer.eval_every=512",
                    f"hydra.run.dir={base / 'run'}"], base)
    assert proc.returncode == 0, proc.stderr
    return name, base / "run", total, proc


def test_run_directory_layout(cli_run):
    _, run_dir, _, _ = cli_run
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()
    assert (run_dir / "train.log").stat().st_size > 0
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    assert (run_dir / "results.json").is_file()
    assert not list(run_dir.rglob("*.tmp"))  # atomic writes leave no temp files behind


def test_saved_config_is_the_resolved_run_config(cli_run):
    name, run_dir, total, _ = cli_run
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    algo, env = name.split("_")
    assert saved.algo._target_.endswith({"ppo": ".PPO", "pg": ".PolicyGradient"}[algo])
    assert saved.env.name == env
    assert saved.trainer.total_steps == total


def test_train_log_mirrors_the_console(cli_run):
    _, run_dir, _, proc = cli_run
    log = (run_dir / "train.log").read_text()
    assert "eval return" in log and "done:" in log
    assert " envs (sync), " in log  # the start line names the backend auto or the user chose
    assert "eval return" in proc.stderr + proc.stdout


def test_results_json(cli_run):
    name, run_dir, total, _ = cli_run
    res = read_results(run_dir)
    assert RESULT_KEYS <= set(res)
    assert set(res["versions"]) >= VERSION_KEYS
    assert res["versions"]["torch"] == torch.__version__
    algo, env = name.split("_")
    assert res["algo"] == algo and res["env"] == env and res["seed"] == 0
    assert res["env_id"] == {"cartpole": "CartPole-v1", "pendulum": "Pendulum-v1"}[env]
    assert res["status"] == "completed"
    assert 0 < res["env_steps"] <= total
    assert res["grad_steps"] > 0
    assert res["wall_seconds"] > 0 and res["sps"] > 0
    assert res["eval_episodes"] == 2
    for key in ("eval_return_mean", "eval_return_std", "best_eval_return_mean"):
        assert math.isfinite(res[key]), key
    assert res["best_eval_return_mean"] >= res["eval_return_mean"]
    assert res["eval_return_std"] >= 0


def test_tensorboard_tags(cli_run):
    name, run_dir, _, _ = cli_run
    scalars = read_scalars(run_dir / "tb")
    expected = COMMON_TAGS | (PPO_TAGS if name.startswith("ppo") else set())
    assert expected <= set(scalars), expected - set(scalars)
    res = read_results(run_dir)
    # the x-axis is environment steps: the last loss is logged at the final env step
    assert scalars["losses/policy_loss"][-1][0] == res["env_steps"]
    assert scalars["eval/return_mean"][-1] == (res["env_steps"],
                                               pytest.approx(res["eval_return_mean"]))
    assert max(v for _, v in scalars["eval/return_mean"]) == \
        pytest.approx(res["best_eval_return_mean"])
    steps = [s for s, _ in scalars["losses/policy_loss"]]
    assert steps == sorted(set(steps))


def test_hparams_written_once(cli_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, _, _ = cli_run
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    assert "_hparams_/experiment" in content and "_hparams_/session_start_info" in content
    assert count_summary_tags(run_dir / "tb", "_hparams_/experiment") == 1
    assert count_summary_tags(run_dir / "tb", "_hparams_/session_start_info") == 1


def test_checkpoint_contents(cli_run):
    name, run_dir, total, _ = cli_run
    res = read_results(run_dir)
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=False)
    for ckpt in (last, best):
        assert CHECKPOINT_KEYS <= set(ckpt)
        assert isinstance(ckpt["algo"], dict) and ckpt["algo"]
        assert {"python", "numpy", "torch"} <= set(ckpt["rng"])
        assert ckpt["config"]["trainer"]["total_steps"] == total
        assert ckpt["config"]["seed"] == 0
    assert last["counters"]["env_steps"] == res["env_steps"]
    assert last["counters"]["grad_steps"] == res["grad_steps"]
    assert best["counters"]["env_steps"] <= res["env_steps"]


# ---- in-process ---------------------------------------------------------------------------------
def short_cfg(*extra: str):
    return compose(["algo=ppo", "env=cartpole", "env.n_envs=8", "algo.n_steps=32",
                    "algo.batch_size=256", *FAST, "trainer.total_steps=1024",
                    "trainer.eval_every=512", *extra])


def test_same_seed_gives_the_same_numbers_and_another_seed_does_not(tmp_path):
    a = train(short_cfg("seed=3"), tmp_path / "a")
    b = train(short_cfg("seed=3"), tmp_path / "b")
    c = train(short_cfg("seed=4"), tmp_path / "c")
    assert {k: a[k] for k in NUMBERS} == {k: b[k] for k in NUMBERS}
    # torch_threads: the ThreadTuner's choice, a timing (under load one run may keep one
    # thread); the numbers above do not depend on it
    for key in set(a) - {"wall_seconds", "sps", "run_dir", "torch_threads"}:
        assert a[key] == b[key] or (a[key] != a[key] and b[key] != b[key]), key
    sa, sb = read_scalars(tmp_path / "a" / "tb"), read_scalars(tmp_path / "b" / "tb")
    for tag in ("losses/policy_loss", "charts/episodic_return", "eval/return_mean"):
        assert sa[tag] == sb[tag], tag
    # ... and the seed matters, so the equality above is not vacuous
    sc = read_scalars(tmp_path / "c" / "tb")
    assert sa["losses/policy_loss"] != sc["losses/policy_loss"]
    assert c["env_steps"] == a["env_steps"]


@pytest.mark.parametrize("threads", [1, 2])
def test_torch_threads_sets_torch_threads_and_numpy_blas_stays_on_one(tmp_path, threads):
    before = torch.get_num_threads()
    blas_before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    try:
        train(short_cfg("trainer.total_steps=256", f"trainer.torch_threads={threads}"),
              tmp_path / "r")
        blas = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
        assert torch.get_num_threads() == threads
        assert blas and all(n == 1 for n in blas)
    finally:
        torch.set_num_threads(before)
        threadpool_limits(max(blas_before, default=None), user_api="blas")


def test_auto_threads_are_one_for_small_networks_and_every_core_for_big_sac(tmp_path):
    before = torch.get_num_threads()
    try:
        ppo = train(short_cfg("trainer.total_steps=256", "algo.batch_size=64"), tmp_path / "ppo")
        assert ppo["torch_threads"] == torch.get_num_threads() == 1
        # 256 rows of 64x64 reach THREADS_FROM_MACS; trpo's conjugate gradient stays on one
        # (its one update runs inside the ThreadTuner's first probe, partly on one thread)
        ppo = train(short_cfg("trainer.total_steps=256"), tmp_path / "ppo256")
        assert ppo["torch_threads"] == usable_cores()
        trpo = train(short_cfg("algo=trpo", "trainer.total_steps=256", "algo.batch_size=64"),
                     tmp_path / "trpo")
        assert trpo["torch_threads"] == torch.get_num_threads() == 1
        # no update runs before learning_starts: only the thread choice is exercised
        sac = train(compose(["algo=sac", "env=pendulum", *FAST, "trainer.total_steps=50",
                             "algo.learning_starts=100"]), tmp_path / "sac")
        assert sac["torch_threads"] == torch.get_num_threads() == usable_cores()
    finally:
        torch.set_num_threads(before)


def test_initial_weights_do_not_depend_on_the_threads_the_process_had(tmp_path):
    # orthogonal init's QR differs in its last bits between 1 and 2 threads (LunarLander's ppo
    # nets): the networks are built on one thread whatever torch was set to before
    from rl_runner.trainer import Trainer

    before = torch.get_num_threads()
    weights = []
    try:
        for threads in (2, 1):
            torch.set_num_threads(threads)
            t = Trainer(compose(["algo=ppo", "env=lunarlander", *FAST]), tmp_path / str(threads))
            weights.append(torch.cat([p.detach().reshape(-1) for p in t.algo.net.parameters()]))
            t.logger.close()
    finally:
        torch.set_num_threads(before)
    assert torch.equal(weights[0], weights[1])


def test_budget_rounds_down_to_whole_rollouts(tmp_path):
    res = train(short_cfg("trainer.total_steps=1000"), tmp_path / "r")
    assert res["env_steps"] == 1000 // 256 * 256  # rollout: 32 steps x 8 envs


def test_ppo_kl_penalty_objective(tmp_path):
    res = train(short_cfg("algo.objective=kl_penalty"), tmp_path / "kl")
    assert res["status"] == "completed"
    scalars = read_scalars(tmp_path / "kl" / "tb")
    beta = scalars["charts/kl_beta"]
    assert len(beta) == res["env_steps"] // 256
    # the adaptive coefficient halves, doubles or stays (PPO paper sec. 4)
    values = [1.0] + [v for _, v in beta]
    for prev, cur in zip(values, values[1:]):
        assert cur / prev in (0.5, 1.0, 2.0)
    assert all(math.isfinite(v) for _, v in scalars["losses/policy_loss"])


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    """A user's algorithm plugged in by _target_ whose loss turns NaN in its 4th update."""
    run_dir = tmp_path / "run"
    proc = run_cli(["algo=ppo", "env=cartpole", "env.n_envs=8", "algo.n_steps=32",
                    "algo._target_=tests.helpers.nan_algo.NaNAfter3PPO", *FAST,
                    "trainer.total_steps=4096", "trainer.checkpoint_every=256",
                    f"hydra.run.dir={run_dir}"], tmp_path, pythonpath=REPO)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("rl-run: error:") and "NaN" in last_line
    assert "1024" in last_line  # the step: 4 rollouts of 256
    res = read_results(run_dir)
    assert res["status"] == "failed"
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["counters"]["env_steps"] == 768  # the last good state, not the NaN one


@pytest.mark.parametrize("deterministic", [True, False])
def test_evaluation_acts_as_trainer_eval_deterministic_says(tmp_path, monkeypatch, deterministic):
    """Sampled evaluation (the RL Zoo's on Atari) when asked; the policy's mode otherwise, and
    rl-eval follows the run's setting unless told."""
    from rl_runner.algos.ppo import PPO
    from rl_runner.rl_eval import main as rl_eval

    seen: list[bool] = []
    act = PPO.act

    def spy(self, obs, deterministic=False):
        seen.append(deterministic)
        return act(self, obs, deterministic)

    monkeypatch.setattr(PPO, "act", spy)
    train(short_cfg(f"trainer.eval_deterministic={deterministic}"), tmp_path / "run")
    assert seen and set(seen) == {deterministic}
    seen.clear()
    rl_eval([f"run={tmp_path / 'run'}", "episodes=1"])
    assert seen and set(seen) == {deterministic}
    seen.clear()
    rl_eval([f"run={tmp_path / 'run'}", "episodes=1", f"deterministic={not deterministic}"])
    assert seen and set(seen) == {not deterministic}


class NeverEnds(gym.Env):
    """No time limit and no terminal state: a policy's episode here never ends."""
    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 0.0, False, False, {}


def test_ctrl_c_stops_an_evaluation_whose_episodes_never_end(tmp_path, monkeypatch):
    """The first Ctrl-C stops the evaluation too (it finished the update already): the run saves
    last.pt as interrupted, with that evaluation still due."""
    from rl_runner.algos.ppo import PPO

    if "NeverEnds-v0" not in gym.registry:
        gym.register("NeverEnds-v0", entry_point=NeverEnds)
    calls: list[int] = []
    act = PPO.act

    def press_ctrl_c(self, obs, deterministic=False):  # only the evaluation calls act
        calls.append(1)
        if len(calls) == 50:
            os.kill(os.getpid(), signal.SIGINT)
        assert len(calls) < 1000, "the evaluation went on after Ctrl-C"  # else: forever
        return act(self, obs, deterministic)

    monkeypatch.setattr(PPO, "act", press_ctrl_c)
    run_dir = tmp_path / "run"
    results = train(compose(["algo=ppo", "env=gym", "env.id=NeverEnds-v0", "env.n_envs=2",
                             "algo.n_steps=32", "algo.batch_size=64", *FAST,
                             "trainer.total_steps=256", "trainer.eval_every=128"]), run_dir)
    assert results["status"] == "interrupted" and results["env_steps"] == 128
    assert 50 <= len(calls) <= 52  # stopped at once, not at the budget's end
    counters = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)["counters"]
    assert counters["last_eval_step"] == -1 and counters["next_eval"] == 128


@pytest.mark.parametrize("sampled", [False, True])
def test_a_resume_after_a_stopped_evaluation_gives_the_uninterrupted_numbers(tmp_path,
                                                                            monkeypatch,
                                                                            sampled):
    """Ctrl-C in the middle of an evaluation, then resume: the evaluation runs again at its own
    step, from the draws it had (sampled actions use the algorithm's generator), and the run
    ends with the numbers and curves of one never stopped."""
    from rl_runner.algos.ppo import PPO

    args = ["algo=ppo", "env=cartpole", "env.n_envs=2", "algo.n_steps=32", "algo.batch_size=64",
            *FAST, "trainer.total_steps=384", "trainer.eval_every=128", "seed=3",
            f"trainer.eval_deterministic={not sampled}"]
    whole = train(compose(args), tmp_path / "whole")
    calls: list[int] = []
    act = PPO.act

    def press_ctrl_c(self, obs, deterministic=False):
        calls.append(1)
        if len(calls) == 5:  # within the first evaluation's first episodes
            os.kill(os.getpid(), signal.SIGINT)
        return act(self, obs, deterministic)

    monkeypatch.setattr(PPO, "act", press_ctrl_c)
    stopped = train(compose(args), tmp_path / "parts")
    assert stopped["status"] == "interrupted" and stopped["env_steps"] == 128
    monkeypatch.setattr(PPO, "act", act)
    resumed = train(compose(args), tmp_path / "parts", resume=True)
    assert resumed["status"] == "completed"
    assert {k: resumed[k] for k in NUMBERS} == {k: whole[k] for k in NUMBERS}
    curves = [read_scalars(tmp_path / run / "tb")["eval/return_mean"] for run in
              ("whole", "parts")]
    assert curves[0] == curves[1] and [step for step, _ in curves[0]] == [128, 256, 384]


def test_a_signal_after_the_budgets_evaluation_still_completes_the_run(tmp_path, monkeypatch):
    """Nothing was left to do: the run is completed, not a resume that would be refused. One
    recorded as interrupted there (by older code) resumes to completed."""
    from rl_runner.trainer import Trainer

    evaluate = Trainer._evaluate

    def then_ctrl_c(self):
        done = evaluate(self)
        if self.env_steps == self.budget:
            os.kill(os.getpid(), signal.SIGINT)
        return done

    monkeypatch.setattr(Trainer, "_evaluate", then_ctrl_c)
    args = ["algo=ppo", "env=cartpole", "env.n_envs=2", "algo.n_steps=32", "algo.batch_size=64",
            *FAST, "trainer.total_steps=256", "trainer.eval_every=128"]
    assert train(compose(args), tmp_path / "run")["status"] == "completed"
    results = tmp_path / "run" / "results.json"
    results.write_text(results.read_text().replace('"completed"', '"interrupted"'))
    monkeypatch.setattr(Trainer, "_evaluate", evaluate)
    assert train(compose(args), tmp_path / "run", resume=True)["status"] == "completed"
