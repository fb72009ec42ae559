"""TD3 (or DDPG) on Pendulum-v1: rl-runner's steps/s against stable-baselines3's, side by side.

Both libraries train with the same hyperparameters, read from conf/algo/<algo>.yaml under
conf/tuned/<algo>_pendulum.yaml (the RL Zoo's Pendulum-v1 setting) and translated for SB3, and the
same seed. Every run is a fresh process; within a round the runs alternate rl-runner, SB3 for
each thread setting: one torch thread on both sides, then each library's default (rl-runner's
trainer.torch_threads=auto, torch's default for SB3). Steps/s counts env steps over the training
loop's wall time with one final deterministic evaluation of `--episodes` episodes inside it, on
both sides (rl-runner: results.json's sps; SB3: learn() and the same evaluation). On a CPU shared
with other work wall time swings with the load, so each run's process CPU time (user + sys, the
whole process: imports and set-up too) is reported beside it, as env steps per CPU second.

    python scripts/td3_speed.py                          # td3, 20000 steps (the preset), 2 rounds
    python scripts/td3_speed.py --algo ddpg --rounds 1 --steps 12000 --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_common import cpu_model

ROOT = Path(__file__).resolve().parent.parent
RL_RUN = Path(sys.executable).parent / "rl-run"


def settings(algo: str) -> dict:
    """rl-runner's algo.* values for Pendulum: the algo YAML under the tuned preset."""
    from omegaconf import OmegaConf

    values = OmegaConf.load(ROOT / "conf" / "algo" / f"{algo}.yaml")
    preset = OmegaConf.load(ROOT / "conf" / "tuned" / f"{algo}_pendulum.yaml")
    merged = OmegaConf.to_container(OmegaConf.merge(values, preset.get("algo", {})))
    merged.pop("_target_")
    return {"algo": merged, "n_envs": preset.env.n_envs, "steps": preset.trainer.total_steps}


def sb3_kwargs(algo: str, values: dict) -> dict:
    """The same hyperparameters in SB3's names; refuses a value SB3 cannot take the same way."""
    if values["actor_lr"] is not None or values["anneal_lr"]:
        raise SystemExit("actor_lr and anneal_lr have no plain SB3 counterpart here")
    keys = ["buffer_size", "learning_starts", "batch_size", "tau", "gamma", "train_freq",
            "gradient_steps"]
    if algo == "td3":
        keys += ["policy_delay", "target_policy_noise", "target_noise_clip"]
    kwargs = {k: values[k] for k in keys}
    kwargs["learning_rate"] = values["lr"]
    kwargs["policy_kwargs"] = {"net_arch": list(values["hidden_sizes"]),
                               "activation_fn": values["activation"]}
    kwargs["action_noise"] = values["action_noise"]  # the std; NormalActionNoise in the child
    return kwargs


def sb3_child(spec: dict) -> None:
    """In its own process: SB3 learns, then evaluates; both timed."""
    import gymnasium as gym
    import numpy as np
    import torch
    from stable_baselines3 import DDPG, TD3
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.noise import NormalActionNoise

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    kwargs = dict(spec["kwargs"])
    sigma = kwargs.pop("action_noise")
    kwargs["action_noise"] = NormalActionNoise(np.zeros(1), sigma * np.ones(1)) if sigma else None
    kwargs["policy_kwargs"]["activation_fn"] = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[
        kwargs["policy_kwargs"]["activation_fn"]]
    env = make_vec_env("Pendulum-v1", spec["n_envs"], seed=spec["seed"])
    cls = {"td3": TD3, "ddpg": DDPG}[spec["algo"]]
    model = cls("MlpPolicy", env, seed=spec["seed"], device="cpu", verbose=0, **kwargs)
    start = time.perf_counter()
    model.learn(total_timesteps=spec["steps"])
    returns = []
    eval_env = gym.make("Pendulum-v1")
    for i in range(spec["episodes"]):
        obs, _ = eval_env.reset(seed=spec["seed"] + 10_000 + i)
        done, total = False, 0.0
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = eval_env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    seconds = time.perf_counter() - start
    Path(spec["out"]).write_text(json.dumps({
        "sps": model.num_timesteps / seconds, "env_steps": int(model.num_timesteps),
        "eval_return_mean": float(np.mean(returns)), "torch_threads": torch.get_num_threads()}))


def run_sb3(algo: str, seed: int, steps: int, threads: int | None, episodes: int,
            work: Path, tag: str) -> dict:
    info = settings(algo)
    out = work / f"{tag}.json"
    spec = {"algo": algo, "seed": seed, "steps": steps, "threads": threads, "out": str(out),
            "episodes": episodes, "n_envs": info["n_envs"],
            "kwargs": sb3_kwargs(algo, info["algo"])}
    subprocess.run([sys.executable, __file__, "--sb3-child", json.dumps(spec)], check=True)
    return json.loads(out.read_text())


def run_rl_runner(algo: str, seed: int, steps: int, threads: int | None, episodes: int,
                  work: Path, tag: str) -> dict:
    run_dir = work / tag
    subprocess.run([str(RL_RUN), f"algo={algo}", "env=pendulum", f"seed={seed}",
                    f"trainer.total_steps={steps}", f"trainer.eval_every={steps}",
                    f"trainer.eval_episodes={episodes}", "trainer.progress=false",
                    f"trainer.torch_threads={threads or 'auto'}", f"hydra.run.dir={run_dir}"],
                   check=True, capture_output=True)
    res = json.loads((run_dir / "results.json").read_text())
    threads_used = res.get("torch_threads", threads)
    return {"sps": res["sps"], "env_steps": res["env_steps"],
            "eval_return_mean": res["eval_return_mean"], "torch_threads": threads_used}


def main(argv: list[str]) -> int:
    if argv[:1] == ["--sb3-child"]:
        sb3_child(json.loads(argv[1]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algo", choices=["td3", "ddpg"], default="td3")
    p.add_argument("--steps", type=int, default=None, help="env steps (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--threads", choices=["1", "default", "both"], default="both")
    p.add_argument("--work", type=Path, default=Path("/tmp/td3_speed"))
    p.add_argument("--json", type=Path, default=None, help="write every run's row here")
    args = p.parse_args(argv)
    steps = args.steps or settings(args.algo)["steps"]
    args.work.mkdir(parents=True, exist_ok=True)
    settings_list = {"1": [1], "default": [None], "both": [1, None]}[args.threads]
    rows = []
    for r in range(args.rounds):
        for threads in settings_list:
            for lib, runner in (("rl-runner", run_rl_runner), ("sb3", run_sb3)):
                tag = f"{args.algo}_{lib}_t{threads or 'default'}_r{r}_s{args.seed}"
                load = os.getloadavg()[0]
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                res = runner(args.algo, args.seed, steps, threads, args.episodes, args.work, tag)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
                row = {"round": r, "lib": lib, "threads": threads or "default", "load1": load,
                       "cpu_seconds": cpu, "steps_per_cpu_second": res["env_steps"] / cpu, **res}
                rows.append(row)
                print(f"round {r} {lib:9s} threads={row['threads']!s:7s} "
                      f"(used {res['torch_threads']}) load {load:4.1f}: "
                      f"{res['sps']:7.1f} steps/s, {row['steps_per_cpu_second']:7.1f} steps/CPU s, "
                      f"eval {res['eval_return_mean']:8.1f}",
                      flush=True)
    print(f"\n{args.algo} pendulum, {steps} env steps, seed {args.seed}, {cpu_model()}, "
          f"{os.cpu_count()} cores")
    for threads in settings_list:
        t = threads or "default"
        for unit, key in (("steps/s", "sps"), ("steps/CPU s", "steps_per_cpu_second")):
            ours = [x[key] for x in rows if x["lib"] == "rl-runner" and x["threads"] == t]
            theirs = [x[key] for x in rows if x["lib"] == "sb3" and x["threads"] == t]
            pairs = [a / b for a, b in zip(ours, theirs)]
            print(f"threads {t}: rl-runner {statistics.median(ours):.1f} {unit}, sb3 "
                  f"{statistics.median(theirs):.1f}; ratio per round "
                  f"{', '.join(f'{x:.2f}' for x in pairs)} (median {statistics.median(pairs):.2f})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
