"""Offline check: cql against naive offline learning (algo.cql_weight=0) on fixed datasets.

    python scripts/offline_benchmark.py --experiments pendulum-medium-replay --seeds 0,1,2 --jobs 2

Each experiment first makes its dataset with rl-run and rl-collect (a policy stopped before it
is good), then runs cql and naive for each seed with the tuned defaults (cql with CQL_SETTINGS
where an experiment's data asks for other ones). The table goes to the
`offline` section of docs/benchmarks.md (rows of the experiments run are replaced): final returns,
the critics' mean Q on the dataset's actions at the end (losses/q_data) beside the data's own
discounted return-to-go, and the critics' Q on the final policy's own actions beside the return
the policy then got, which shows over- or underestimation.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from bench_common import cpu_model, group_runs, rl_run, seed_cells, write_table_section
from rl_runner.policy import load_policy
from rl_runner.collection import rollout

ROOT = Path(__file__).resolve().parent.parent
RL_COLLECT = Path(sys.executable).with_name("rl-collect")
START, END = "<!-- offline:start -->", "<!-- offline:end -->"
GAMMA = 0.99  # cql's default discount, for the data's return-to-go (the runs keep it)
EVAL_SEED = 10_000  # the reset seeds of the Q-against-return episodes
# experiment -> (env, the source run's overrides, rl-collect's arguments, what the data is)
EXPERIMENTS = {
    "pendulum-medium-replay": (
        "pendulum",
        # sac's own lr (3e-4), not the pendulum preset's 1e-3: that one is good by 2,400
        # steps, and its buffer before then holds 8 upright, slow rows; this one's 3,000 hold 26
        ["algo=sac", "algo.lr=3e-4", "trainer.total_steps=3000", "trainer.eval_every=500",
         "trainer.save_replay_buffer=true", "trainer.torch_threads=1"],
        ["source=replay"],
        "the replay buffer of sac at lr 3e-4, stopped at 3000 env steps"),
    "cartpole-mixed": (
        "cartpole",
        ["algo=ppo", "trainer.total_steps=20000"],
        ["checkpoint=last", "steps=50000", "epsilon=0.3", "deterministic=false"],
        "ppo stopped at 20k env steps, sampled, 30% uniform random actions, 50k steps"),
}
# stronger sources on the same recipe (issue 22): the first five ppo seeds from 0 whose policy at
# 20k env steps evaluates 300 to 500 (2026-12-05, torch_threads=1; seeds 0-10: 239.0, 145.4,
# 202.5, 500.0, 198.5, 302.0, 353.9, 323.9, 293.8, 230.0, 500.0)
STRONG_SOURCES = (3, 5, 6, 7, 10)
for _seed in STRONG_SOURCES:
    EXPERIMENTS[f"cartpole-mixed-ppo{_seed}"] = (
        "cartpole",
        ["algo=ppo", "trainer.total_steps=20000", f"seed={_seed}", "trainer.torch_threads=1"],
        ["checkpoint=last", "steps=50000", "epsilon=0.3", "deterministic=false"],
        f"ppo seed {_seed} stopped at 20k env steps, sampled, 30% uniform random actions, "
        "50k steps")
VARIANTS = {"cql": [], "naive": ["algo.cql_weight=0"]}
# cql's conservative term on an experiment's data where it differs from the tuned defaults,
# chosen on seeds 0-9 (2026-12-04; seeds 10-19 held out). On this replay data the pendulum
# preset's cql_weight=5 left the policy near -213 (seeds 0-2). Means over seeds 0-9: weight 2
# -160.0 (every seed -140.6 to -172.0), 1 -164.3 and 0.5 -168.6 (seed 7 fails: -284.9, -404.9;
# at 0.5 and 20k steps its policy spins, its critics' Q +50 to +160 there); naive -183.4 (seeds 2
# and 7 swing or spin the pendulum round)
CQL_SETTINGS = {"pendulum-medium-replay": ["algo.cql_weight=2"]}
HEADER = ["| experiment | algo | data | budget | seeds | final eval return per seed | mean | "
          "Q on the data's actions at the end | the data's return-to-go | Q on the policy's own "
          "actions / the return that followed | wall s per seed | date |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]


def make_dataset(experiment: str, work: Path) -> dict:
    """The experiment's source run and its dataset: path, source eval return, rows."""
    env, source, collect, _ = EXPERIMENTS[experiment]
    run_dir = work / f"{experiment}_source"
    seed = [] if any(a.startswith("seed=") for a in source) else ["seed=0"]
    res = rl_run([f"env={env}", *seed, *source], run_dir, f"{experiment} source")
    out = work / f"{experiment}.npz"
    subprocess.run([str(RL_COLLECT), f"run={run_dir}", f"out={out}", *collect], check=True,
                   capture_output=True)
    with np.load(out) as f:
        rewards, starts = f["rewards"], f["episode_starts"]
        ends = f["terminations"] | f["truncations"]
        meta = json.loads(str(f["metadata"]))
    return {"path": out, "source_return": res["eval_return_mean"], "rows": len(rewards),
            "episode_returns": meta["episode_returns"],
            "return_to_go": float(return_to_go(rewards, starts, ends).mean())}


def return_to_go(rewards: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                 gamma: float = GAMMA) -> np.ndarray:
    """sum_k gamma^k r_(t+k) within each row's episode (cut at the data's end; a replay
    buffer marks no time limits, so its episodes run on into the next)."""
    out, running = np.zeros(len(rewards)), 0.0
    for t in range(len(rewards) - 1, -1, -1):
        if ends[t] or (t + 1 < len(rewards) and starts[t + 1]):
            running = 0.0
        running = rewards[t] + gamma * running
        out[t] = running
    return out


def final_q_data(run_dir: Path) -> float | None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    if "losses/q_data" not in acc.Tags()["scalars"]:
        return None
    return acc.Scalars("losses/q_data")[-1].value


@torch.no_grad()
def policy_q(algo, obs: np.ndarray) -> np.ndarray:
    """The critics' Q at each state and the final policy's deterministic action there (Box: the
    smaller of the two, as SAC's actor uses them; Discrete: the max of the network the policy
    reads, the target)."""
    if algo.discrete:
        return algo.learner.policy_q(obs).max(-1).values.cpu().numpy()
    x = torch.from_numpy(obs.astype(np.float32))
    mean, _ = algo.sac._actor_out(x)
    return algo.sac.q(torch.cat([x, torch.tanh(mean)], -1)).min(0).values[:, 0].numpy()


def q_against_return(run_dir: Path, episodes: int = 5, scored: int = 200,
                     horizon: int = 1000) -> tuple[float, float]:
    """Mean Q(s, pi(s)) over the first `scored` states of each of `episodes` deterministic
    episodes of the final policy (rl-collect's rollout, reset seeds EVAL_SEED + i), and the mean
    discounted return that followed them. The episodes run up to `horizon` steps, so the
    return's cut-off tail weighs at most gamma^(horizon - scored) (3.2e-4 for 0.99 and 800)."""
    policy = load_policy(run_dir, "last")
    OmegaConf.update(policy.config, "env.kwargs.max_episode_steps", horizon, force_add=True)
    data = rollout(policy, episodes, None, {"seed": EVAL_SEED, "deterministic": True,
                                            "noise": 0.0, "epsilon": 0.0}, progress=False)
    rows = np.arange(len(data.rewards))
    step = rows - np.maximum.accumulate(np.where(data.episode_starts, rows, 0))
    first = step < scored
    returns = return_to_go(data.rewards, data.episode_starts,
                           data.terminations | data.truncations, policy.config.algo.gamma)
    return (float(policy_q(policy.algo, data.observations[first]).mean()),
            float(returns[first].mean()))


def settings(experiment: str, variant: str) -> list[str]:
    """The variant's overrides: cql's settings for the experiment, or naive's cql_weight=0."""
    return CQL_SETTINGS.get(experiment, []) if variant == "cql" else VARIANTS[variant]


def run_one(experiment: str, variant: str, seed: int, data: dict, work: Path,
            threads: int) -> dict:
    env = EXPERIMENTS[experiment][0]
    run_dir = work / f"{experiment}_{variant}_s{seed}"
    res = rl_run(["algo=cql", f"env={env}", f"seed={seed}", f"dataset.path={data['path']}",
                  f"trainer.torch_threads={threads}", *settings(experiment, variant)], run_dir,
                 f"{experiment} {variant} seed {seed}")
    done = res.get("status") == "completed"
    q = final_q_data(run_dir) if done else None
    q_pi, g_pi = q_against_return(run_dir) if done else (None, None)
    return {**res, "experiment": experiment, "variant": variant, "seed": seed, "q_data": q,
            "q_pi": q_pi, "return_pi": g_pi}


def rows(results: list[dict], data: dict[str, dict], stamp: str) -> dict[tuple[str, str], str]:
    out, cpu = {}, cpu_model()
    for (experiment, variant), (ok, _) in group_runs(results, ("experiment", "variant")).items():
        d = data[experiment]
        behaviour = (f"; its episodes {statistics.mean(d['episode_returns']):.1f}"
                     if d["episode_returns"] else "")
        about = (f"{EXPERIMENTS[experiment][3]}: {d['rows']} rows; source policy's eval "
                 f"{d['source_return']:.1f}{behaviour}")
        if not ok:
            out[experiment, variant] = f"| {experiment} | {variant} | {about} | failed |" + \
                " - |" * 8
            continue
        seeds, returns, walls, mean = seed_cells(ok)
        qs = ", ".join(f"{r['q_data']:.1f}" for r in ok if r["q_data"] is not None)
        q_pi = ", ".join(f"{r['q_pi']:.1f} / {r['return_pi']:.1f}" for r in ok)
        out[experiment, variant] = (
            f"| {experiment} | {variant} | {about} | {ok[0]['grad_steps']} gradient steps"
            f"{''.join(', ' + o for o in settings(experiment, variant))} | "
            f"{seeds} | {returns} | {mean:.1f} | {qs} | {d['return_to_go']:.1f} | {q_pi} | "
            f"{walls} ({cpu}) | {stamp} |")
    return out


def write_section(path: Path, new_rows: dict[tuple[str, str], str], command: str) -> str:
    return write_table_section(path, START, END, (
            "## Offline RL: cql against naive offline learning\n\n"
            "Final deterministic evaluation, 20 episodes, after the whole budget (`rl-run "
            "algo=cql` with the tuned defaults; naive is `algo.cql_weight=0`, offline SAC for "
            "Box actions, offline double DQN for Discrete ones). Q on the data's actions is "
            "`losses/q_data` at the last logged step, per seed, beside the data's own "
            "return-to-go (gamma 0.99, mean over rows), what the policy that made the data got "
            "from there. Over- or underestimation shows in the next column: the critics' Q "
            "at the final policy's own deterministic actions (Box: the smaller critic; "
            "Discrete: the max of the target network, which the policy reads), averaged over "
            "the first 200 states of 5 episodes, against "
            "the discounted return the policy then got from those states (the episodes run "
            "1000 steps, so the cut-off tail weighs at most 0.99^800 = 3.2e-4). Pendulum's rewards "
            "are at most 0, so any positive Q there is overestimation, and CartPole's Q "
            "cannot exceed 1 / (1 - 0.99) = 100. "
            "cql's settings other than the tuned defaults are in the budget column. Each row "
            "is made by `python scripts/offline_benchmark.py --experiments <experiment> "
            "--seeds <seeds>` (last: `" + command + "`)."),
        HEADER, new_rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiments", default=",".join(EXPERIMENTS),
                   help=f"comma list of {', '.join(EXPERIMENTS)} (default: all)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args()
    names = args.experiments.split(",")
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        p.error(f"unknown experiment {', '.join(unknown)}; choices: {', '.join(EXPERIMENTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(1)  # this process only measures Q against returns, between the runs
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        work = Path(tmp)
        data = {n: make_dataset(n, work) for n in names}
        jobs = [(n, v, s) for n in names for v in VARIANTS for s in seeds]
        # parallel runs share the cores: more threads than cores stalls torch
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        results = list(pool.map(lambda j: run_one(*j, data[j[0]], work, threads), jobs))
    stamp = datetime.datetime.now().strftime("%Y-%m-%d")
    command = "python scripts/offline_benchmark.py " + " ".join(sys.argv[1:])
    print(write_section(args.out, rows(results, data, stamp), command.strip()))


if __name__ == "__main__":
    main()
