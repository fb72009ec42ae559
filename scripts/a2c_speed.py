"""rl-runner's a2c against SB3's A2C, side by side: training steps/s and final returns.

    .venv/bin/python scripts/a2c_speed.py                      # CartPole, RL Zoo settings, 500k
    .venv/bin/python scripts/a2c_speed.py --steps 100000 --seeds 0 1

Each round (one per seed) runs, one after another, in fresh processes: rl-run with the a2c
preset, SB3 with one torch thread, SB3 with torch's default threads; the order rotates from round
to round so that a change in the machine's load falls on each in turn. Steps/s count training
only (acting, learning, logging), no evaluation in either: rl-runner's charts/SPS at its last
step (logged before its one evaluation at the end), SB3's model.learn() time. The final policy of
each is then evaluated deterministically over the same number of episodes. Ratios are taken within
a round (runs next to each other), then their median reported.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_common import cpu_model

RL_RUN = Path(sys.executable).with_name("rl-run")
# the RL Zoo's hyperparams/a2c.yml for envs without `normalize`; lr "lin_x" = linear decay
ZOO = {"cartpole": ("CartPole-v1", dict(n_envs=8, kwargs=dict(ent_coef=0.0))),
       "lunarlander": ("LunarLander-v3", dict(n_envs=8, kwargs=dict(
           gamma=0.995, n_steps=5, learning_rate="lin_0.00083", ent_coef=0.00001)))}
RUNNERS = ("rl-runner", "sb3_1thread", "sb3_default_threads")


def run_ours(env: str, seed: int, steps: int, episodes: int, work: Path) -> dict:
    run_dir = work / f"rl-runner_{env}_s{seed}"
    cmd = [str(RL_RUN), "algo=a2c", f"env={env}", f"seed={seed}", f"trainer.total_steps={steps}",
           f"trainer.eval_every={steps}", f"trainer.eval_episodes={episodes}",
           "trainer.progress=false", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"rl-run failed: {proc.stderr.strip()[-400:]}")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    sps = acc.Scalars("charts/SPS")[-1].value  # training only: before the final evaluation
    res = json.loads((run_dir / "results.json").read_text())
    return {"sps": sps, "return": res["eval_return_mean"], "steps": res["env_steps"]}


def run_sb3(env: str, seed: int, steps: int, episodes: int, threads: int | None,
            work: Path) -> dict:
    out = work / f"sb3_{threads or 'default'}_{env}_s{seed}.json"
    spec = dict(env=env, seed=seed, steps=steps, episodes=episodes, threads=threads,
                out=str(out))
    proc = subprocess.run([sys.executable, __file__, "--sb3-child", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"SB3 run failed: {proc.stderr.strip()[-400:]}")
    return json.loads(out.read_text())


def sb3_child(spec: dict) -> None:
    """In its own process: SB3's A2C with the Zoo's settings; learn() timed, then evaluated."""
    import torch
    from stable_baselines3 import A2C
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    env_id, zoo = ZOO[spec["env"]]
    kwargs = dict(zoo["kwargs"])
    lr = kwargs.pop("learning_rate", 7e-4)
    if isinstance(lr, str):  # lin_x: x times the remaining progress, as the Zoo's schedule
        start = float(lr[4:])
        kwargs["learning_rate"] = lambda remaining: remaining * start
    env = make_vec_env(env_id, n_envs=zoo["n_envs"], seed=spec["seed"])
    model = A2C("MlpPolicy", env, seed=spec["seed"], device="cpu", **kwargs)
    start_t = time.perf_counter()
    model.learn(total_timesteps=spec["steps"])
    seconds = time.perf_counter() - start_t
    eval_env = make_vec_env(env_id, n_envs=1, seed=spec["seed"] + 10_000)
    mean, _ = evaluate_policy(model, eval_env, n_eval_episodes=spec["episodes"],
                              deterministic=True)
    Path(spec["out"]).write_text(json.dumps({
        "sps": model.num_timesteps / seconds, "return": float(mean),
        "steps": int(model.num_timesteps), "threads": torch.get_num_threads()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="cartpole", choices=sorted(ZOO))
    p.add_argument("--steps", type=int, default=500_000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--runners", nargs="+", default=list(RUNNERS), choices=RUNNERS,
                   help="a subset, e.g. without sb3_default_threads, which a loaded CPU slows most")
    p.add_argument("--work", type=Path, default=Path("/tmp/a2c_speed"))
    p.add_argument("--sb3-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.sb3_child:
        sb3_child(json.loads(args.sb3_child))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} cores), load average at start "
          f"{os.getloadavg()[0]:.2f}; {args.env}, {args.steps} steps", flush=True)
    runners = [r for r in RUNNERS if r in args.runners]
    if "rl-runner" not in runners:
        p.error("--runners must include rl-runner: the ratios are against it")
    rows: dict[str, list[dict]] = {r: [] for r in runners}
    for i, seed in enumerate(args.seeds):
        k = i % len(runners)
        order = runners[k:] + runners[:k]
        for runner in order:
            if runner == "rl-runner":
                r = run_ours(args.env, seed, args.steps, args.eval_episodes, args.work)
            else:
                threads = 1 if runner == "sb3_1thread" else None
                r = run_sb3(args.env, seed, args.steps, args.eval_episodes, threads, args.work)
            rows[runner].append(r)
            print(f"seed {seed} {runner:20s} {r['sps']:8.0f} steps/s  return {r['return']:7.1f}"
                  f"  (load {os.getloadavg()[0]:.2f})", flush=True)
    print()
    for runner in runners[1:]:
        ratios = [a["sps"] / b["sps"] for a, b in zip(rows["rl-runner"], rows[runner])]
        print(f"rl-runner / {runner}: median {statistics.median(ratios):.2f}x "
              f"(per seed {', '.join(f'{x:.2f}' for x in ratios)})")
    for runner in runners:
        rets = [r["return"] for r in rows[runner]]
        print(f"{runner:20s} mean final return {statistics.mean(rets):7.1f} "
              f"(per seed {', '.join(f'{x:.1f}' for x in rets)})")


if __name__ == "__main__":
    main()
