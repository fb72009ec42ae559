"""scripts/gpu_check.py without a GPU: its refusal, its equality harness run CPU against CPU (every
algorithm's update is deterministic, and a difference is caught), and scripts/bench_tasks.py's
tasks composing to the hyperparameters their SB3 side gets."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import REPO, cli_env, compose

sys.path.insert(0, str(REPO / "scripts"))
import bench_peers  # noqa: E402
import bench_tasks  # noqa: E402
import gpu_equality  # noqa: E402
from benchmark import config_mismatches  # noqa: E402

SCRIPT = REPO / "scripts" / "gpu_check.py"


def script(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=cli_env(), timeout=120)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_without_cuda_it_says_so_in_one_line():
    proc = script([])
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA is not available" in lines[0] and "--device cpu" in lines[0]


def test_help_and_bad_arguments():
    assert script(["--help"]).returncode == 0
    proc = script(["--device", "cpu", "--cases", "nope"])
    assert proc.returncode == 2 and "unknown part or case nope" in proc.stderr


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Expert datasets (gail, offline) generated into the test's own directory."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_every_family_updates_alike_from_the_same_state_and_batch(cache):
    results = gpu_equality.check("cpu", ["ppo clip", "sac Discrete", "cql Box", "gail"], 1e-3)
    assert [r.verdict for r in results] == ["equal"] * 4, [(r.case, r.note) for r in results]
    assert all(r.diff == 0 and r.repeat == 0 and r.state_on == "cpu" for r in results)


def test_a_device_copy_that_updates_differently_is_caught(monkeypatch):
    built, real = [], gpu_equality.build_algo

    def build(*args, **kwargs):  # the second build (the "device" copy) sees other rewards
        algo = real(*args, **kwargs)
        built.append(algo)
        if len(built) == 2:
            update = algo.update
            algo.update = lambda batch: update(batch._replace(rewards=batch.rewards * 1.5))
        return algo

    monkeypatch.setattr(gpu_equality, "build_algo", build)
    r, = gpu_equality.check("cpu", ["ppo clip"], 1e-3)
    assert r.verdict == "DIFFERS" and r.diff > 0 and r.ratio > 0 and r.worst, r
    assert r.repeat > 0  # the two "device" copies disagree as well


def test_an_algorithm_without_device_is_cpu_only_on_a_gpu(monkeypatch):
    monkeypatch.setattr(gpu_equality, "takes_device", lambda cls: False)
    r, = gpu_equality.check("cuda", ["ppo clip"], 1e-3)
    assert r.verdict == "cpu only" and r.algo == "PPO"


def test_close_is_within_the_tolerance_of_the_update():
    r = gpu_equality.Result("x", "", diff=1e-7, ratio=5e-4, metrics=1e-6)
    assert gpu_equality.verdict(r, "cuda", 1e-3) == "close"
    assert gpu_equality.verdict(r, "cuda", 1e-4) == "DIFFERS"
    assert gpu_equality.verdict(r, "cpu", 1e-3) == "DIFFERS"  # the dry run wants bit for bit


def test_checkpoints_of_an_algorithm_hold_cpu_tensors():
    assert gpu_equality.checkpoint_location({"w": torch.ones(3)}) == "cpu"


@pytest.mark.parametrize("name", sorted(bench_tasks.TASKS))
def test_benchmark_tasks_compose_to_what_sb3_gets(name):
    task = bench_tasks.TASKS[name]
    if not (REPO / "conf" / "tuned" / f"{task.algo_name}_{task.env}.yaml").exists():
        pytest.skip(f"no preset for algo={task.algo_name} env={task.env} in this checkout")
    cfg = OmegaConf.to_container(compose([f"algo={task.algo_name}", f"env={task.env}"]),
                                 resolve=True)
    assert config_mismatches(task, cfg) == []


def test_peer_models_take_the_tasks_hyperparameters():
    pytest.importorskip("stable_baselines3")
    task = bench_tasks.TASKS["ppo-hopper"]
    pytest.importorskip("mujoco")
    env = bench_tasks.peer_env(task, 0)
    model = bench_peers.peer_model(task, env, 0, torch, 1_000_000)
    assert type(env).__name__ == "VecNormalize" and env.gamma == 0.99
    assert model.n_steps == 2048 and model.batch_size == 64 and model.n_epochs == 10
    assert model.lr_schedule(0.5) == pytest.approx(1.5e-4)  # anneal_lr: linear to 0
    assert float(model.policy.log_std.detach().mean()) == 0.0
    env.close()


@pytest.mark.parametrize("name, attrs", [
    ("dqn-cartpole", {"target_update_interval": 10, "exploration_final_eps": 0.04,
                      "gradient_steps": 128, "batch_size": 64, "n_steps": 3}),
    ("a2c-cartpole", {"n_steps": 5, "gae_lambda": 1.0, "normalize_advantage": False}),
    ("td3-pendulum", {"policy_delay": 2, "target_policy_noise": 0.2, "gamma": 0.98,
                      "learning_starts": 10_000}),
])
def test_new_peer_models_take_the_tasks_hyperparameters(name, attrs):
    pytest.importorskip("stable_baselines3")
    task = bench_tasks.TASKS[name]
    env = bench_tasks.peer_env(task, 0)
    model = bench_peers.peer_model(task, env, 0, torch, task.total_steps)
    assert {k: getattr(model, k) for k in attrs} == attrs
    if name == "td3-pendulum":  # Gaussian exploration noise with the task's std
        assert model.action_noise is not None and model.action_noise._sigma.tolist() == [0.1]
    if name == "a2c-cartpole":
        assert type(model.policy.optimizer).__name__ == "RMSprop"
    env.close()


@pytest.mark.parametrize("option", ["double_q", "dueling", "prioritized"])
def test_the_dqn_peer_refuses_an_option_sb3s_dqn_lacks(option):
    """SB3's DQN takes n-step returns (n_steps) but has none of these: a task asking for one
    would compare different algorithms."""
    pytest.importorskip("stable_baselines3")
    task = bench_tasks.TASKS["dqn-cartpole"]
    task = dataclasses.replace(task, algo={**task.algo, option: True})
    env = bench_tasks.peer_env(task, 0)
    with pytest.raises(ValueError, match=option):
        bench_peers.peer_model(task, env, 0, torch, task.total_steps)
    env.close()


@pytest.mark.parametrize("steps", [102_400, 10_000_000, 20_000_000])
def test_the_peer_anneals_breakout_over_the_zoos_budget_as_rl_runner_does(steps):
    pytest.importorskip("stable_baselines3")
    pytest.importorskip("ale_py")
    from rl_runner.algos.ppo import PPO

    task = bench_tasks.TASKS["ppo-breakout"]
    env = bench_tasks.peer_env(task, 0)
    model = bench_peers.peer_model(task, env, 0, torch, steps)
    env.close()
    frames = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    ours = PPO(observation_space=frames, action_space=gym.spaces.Discrete(4), n_envs=8,
               total_steps=steps, **task.algo)
    for done in (0, steps // 2, steps - 1024):
        ours.env_steps = done
        remaining = 1.0 - done / steps  # SB3's progress_remaining
        assert model.lr_schedule(remaining) == pytest.approx(ours.current_lr())
        assert model.clip_range(remaining) == pytest.approx(ours.current_clip())
    if steps < 10_000_000:  # the start of the Zoo's 10M-step schedule, nearly the initial lr
        assert ours.current_lr() > 0.98 * task.algo["lr"]


def test_sb3_plays_whole_atari_games():
    pytest.importorskip("stable_baselines3")
    pytest.importorskip("ale_py")
    task = bench_tasks.TASKS["ppo-breakout"]
    evaluator = bench_tasks.PeerAtariEval(task, 1, 0)
    lives = []

    def policy(obs):  # always FIRE: the paddle stays, the ball is lost life after life
        assert obs.shape == (1, 84, 84, 4) and obs.dtype == "uint8"
        lives.append(evaluator.envs.get_attr("ale")[0].lives())
        return [1]

    result = evaluator.run(policy)
    evaluator.close()
    assert result["episodes"] == 1 and lives[0] == 5 and min(lives) == 1


@pytest.mark.parametrize("deterministic", [True, False])
def test_the_peer_acts_as_rl_runners_preset_evaluates(deterministic):
    """Atari presets evaluate with sampled actions (as the Zoo); the peer must be scored alike."""
    seen = []

    class Model:
        def predict(self, obs, deterministic):
            seen.append(deterministic)
            return obs, None

    act = bench_tasks.peer_policy(bench_tasks.TASKS["ppo-breakout"], Model(), None,
                                  deterministic)
    act([0])
    assert seen == [deterministic]


def test_reuse_keeps_no_peer_run_scored_with_other_actions(tmp_path):
    import benchmark

    task = bench_tasks.TASKS["ppo-breakout"]
    out = benchmark.sb3_result(task, 1, None, tmp_path)
    out.write_text('{"status": "completed", "env_steps": 10}')  # before the key: the mode
    assert benchmark.kept_run(task, 1, "sb3", None, tmp_path, deterministic=True) is not None
    assert benchmark.kept_run(task, 1, "sb3", None, tmp_path, deterministic=False) is None
    out.write_text('{"status": "completed", "env_steps": 10, "eval_deterministic": false}')
    assert benchmark.kept_run(task, 1, "sb3", None, tmp_path, deterministic=False) is not None


def test_reuse_keeps_no_peer_run_scored_over_other_final_episodes(tmp_path):
    import benchmark

    task = bench_tasks.TASKS["ppo-breakout"]
    out = benchmark.sb3_result(task, 1, None, tmp_path)
    out.write_text('{"status": "completed", "env_steps": 10, "eval_deterministic": false}')
    assert benchmark.kept_run(task, 1, "sb3", None, tmp_path, False, final_episodes=100) is None
    assert benchmark.kept_run(task, 1, "sb3", None, tmp_path, False) is not None
    out.write_text('{"status": "completed", "env_steps": 10, "eval_deterministic": false, '
                   '"final_episodes": 100}')
    assert benchmark.kept_run(task, 1, "sb3", None, tmp_path, False, final_episodes=100)
    assert benchmark.kept_run(task, 1, "sb3", None, tmp_path, False, final_episodes=30) is None


def test_final_score_replaces_the_return_columns_by_rl_evals(finished_run, tmp_path):
    """rl-runner's final model scored again over N episodes by rl-eval: the return columns are
    its figures, the run's own last evaluation is kept beside them, and a row already scored
    over N is not scored again."""
    import shutil

    import benchmark

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    res = json.loads((run / "results.json").read_text())
    row = {"status": "completed", **benchmark.scored(res["eval_return_mean"],
                                                      res["eval_return_std"],
                                                      res["eval_episodes"])}
    got = benchmark.final_score(row, run, 7, tmp_path)
    ev = json.loads((run / "eval.json").read_text())
    assert ev["episodes"] == 7 and ev["checkpoint"].endswith("last.pt")
    assert got["eval_episodes"] == 7 and got["final_episodes"] == 7
    assert got["eval_return_mean"] == ev["return_mean"]
    assert got["last_eval"]["eval_episodes"] == res["eval_episodes"] == 2
    (run / "eval.json").unlink()
    assert benchmark.final_score(got, run, 7, tmp_path) == got  # not scored again
    assert not (run / "eval.json").exists()
    assert benchmark.final_score(row, run, 0, tmp_path) == row


def test_rl_run_extra_names_its_runners_and_their_directories(tmp_path):
    import benchmark

    args = benchmark.parse_args(["--tasks", "ppo-breakout", "--rl-run-extra",
                                 "algo.precision=bf16", "--backends", "sync,envpool"])
    assert args.extra == ("algo.precision=bf16",)
    task = bench_tasks.TASKS["ppo-breakout"]
    dirs = set()
    for backend in ("sync", "envpool"):
        for extra in ((), args.extra):
            label = benchmark.runner_label(backend, extra)
            assert benchmark.backend_of(label) == backend
            assert benchmark.extra_of(label) == extra
            dirs.add(benchmark.rl_runner_dir(task, 1, tmp_path, backend, extra))
    assert len(dirs) == 4  # never the same directory (nor --reuse row) for two runners
    assert all("=" not in d.name for d in dirs)  # hydra.run.dir=<it> must parse
    assert benchmark.runner_label("sync", args.extra) == "rl-runner [algo.precision=bf16]"
    assert benchmark.backend_of("sb3 (1 thread)") is None


@pytest.mark.parametrize("extra", ["precision=bf16", "env.n_envs=4", "algo.precision"])
def test_rl_run_extra_takes_algo_and_trainer_overrides_only(extra, capsys):
    import benchmark

    with pytest.raises(SystemExit):
        benchmark.parse_args(["--rl-run-extra", extra])
    assert "--rl-run-extra" in capsys.readouterr().err


def test_atari_sections_say_what_rl_runners_cnn_computes_in(monkeypatch):
    """algo.precision=auto resolves per CPU, so a section's speed says which it was."""
    import bench_report
    from rl_runner.algos import base

    monkeypatch.setattr(base, "cpu_bf16_units", lambda: "AVX512-BF16")
    said = bench_report.cnn_precision("ppo", "cpu")
    assert "bfloat16 autocast (this CPU has AVX512-BF16)" in said
    assert "auto: float32 on a GPU;" in bench_report.cnn_precision("ppo", "cuda")
    assert "auto: float32 (trpo keeps float32)" in bench_report.cnn_precision("trpo", "cpu")
    said = bench_report.cnn_precision("ppo", "cpu", ("algo.precision=fp32",))
    assert "as its label says" in said
    monkeypatch.setattr(base, "cpu_bf16_units", lambda: None)
    assert "float32 (no bfloat16 units" in bench_report.cnn_precision("ppo", "cpu")


def test_td3_sections_say_what_its_update_products_run_in(monkeypatch):
    """td3 and ddpg resolve algo.precision=auto per CPU and network size; the other
    algorithms' MLP tasks have no such line."""
    import bench_report
    from bench_tasks import TASKS
    from rl_runner.algos import base

    monkeypatch.setattr(base, "cpu_bf16_units", lambda: "AVX512-BF16")
    said = bench_report.update_precision(TASKS["td3-pendulum"], "cpu")
    assert "bfloat16 hidden-to-hidden products (this CPU has AVX512-BF16)" in said
    assert "float32 on a GPU" in bench_report.update_precision(TASKS["td3-pendulum"], "cuda")
    for extra in ("algo.precision=fp32", "algo.hidden_sizes=[64,64]", "algo.batch_size=32"):
        said = bench_report.update_precision(TASKS["td3-pendulum"], "cpu", (extra,))
        assert "as its label's overrides make it" in said
    assert bench_report.update_precision(TASKS["dqn-cartpole"], "cpu") is None
    monkeypatch.setattr(base, "cpu_bf16_units", lambda: None)
    said = bench_report.update_precision(TASKS["td3-pendulum"], "cpu")
    assert "float32 (no bfloat16 units" in said
