"""Train the bundled expert policies, rl_runner/experts/<env>.pt, with rl-run itself.

    python scripts/train_experts.py                        # all of them
    python scripts/train_experts.py --envs cartpole,pendulum

Each expert is `rl-run algo=<algo> env=<env> seed=<seed>` with the tuned defaults. Its last.pt,
or best.pt where an earlier evaluation was better than the final one, slimmed to the algorithm
state, the config and the counters, becomes rl_runner/experts/<env>.pt;
rl_runner/experts/experts.json records its return over 50 fresh episodes, budget, seed and wall
time. The imitation and offline algorithms collect their default datasets from these files.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
EXPERTS_DIR = ROOT / "rl_runner" / "experts"
RL_RUN = Path(sys.executable).with_name("rl-run")
# env: (algo, seed); ppo reaches the bars of docs/benchmarks.md on these in minutes
EXPERTS = {"cartpole": ("ppo", 0), "lunarlander": ("ppo", 0),
           "lunarlander_continuous": ("ppo", 0), "pendulum": ("ppo", 0)}
KEEP = ("format_version", "algo", "config", "counters")  # what a policy needs (rl_runner.policy)
CHECK_EPISODES = 50


def train_expert(env: str, work: Path) -> dict:
    algo, seed = EXPERTS[env]
    run_dir = work / f"{algo}_{env}_s{seed}"
    cmd = [str(RL_RUN), f"algo={algo}", f"env={env}", f"seed={seed}", "trainer.progress=false",
           f"hydra.run.dir={run_dir}"]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, capture_output=True)
    results = json.loads((run_dir / "results.json").read_text())
    # the final policy where it evaluates as well as the best one (it trained longer: CartPole's
    # first 500 came at 20k steps and still dropped an episode to 464), else the best
    name = "last" if results["eval_return_mean"] >= results["best_eval_return_mean"] else "best"
    state = torch.load(run_dir / "checkpoints" / f"{name}.pt", map_location="cpu",
                       weights_only=False)
    path = EXPERTS_DIR / f"{env}.pt"
    torch.save({k: state[k] for k in KEEP}, path)
    check = evaluate(path, CHECK_EPISODES)
    info = {"algo": algo, "seed": seed, "env_id": results["env_id"], "checkpoint": f"{name}.pt",
            "checkpoint_env_steps": state["counters"]["env_steps"],
            "run_eval_return_mean": (results["eval_return_mean"] if name == "last"
                                     else results["best_eval_return_mean"]),
            f"return_mean_{CHECK_EPISODES}_episodes": round(check["return_mean"], 2),
            f"return_std_{CHECK_EPISODES}_episodes": round(check["return_std"], 2),
            "budget": results["env_steps"], "wall_seconds": round(results["wall_seconds"], 1),
            "rl_runner": results["versions"]["rl_runner"]}
    print(f"{env}: {name}.pt at {info['checkpoint_env_steps']} env steps, return "
          f"{check['return_mean']:.1f} +- {check['return_std']:.1f} over {CHECK_EPISODES} "
          "episodes", flush=True)
    return info


def evaluate(path: Path, episodes: int) -> dict:
    """The expert's deterministic return on fresh episodes (seeds 50000 + i, unseen in training)."""
    from rl_runner.evaluation import Evaluator
    from rl_runner.policy import load_policy

    policy = load_policy(path.parent, str(path))
    evaluator = Evaluator(policy.env_id, episodes, 50_000, **policy.env_options)
    try:
        return evaluator.run(lambda obs: policy.act(obs, True))
    finally:
        evaluator.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--envs", default=",".join(EXPERTS),
                   help=f"comma list of {', '.join(EXPERTS)} (default: all)")
    args = p.parse_args()
    envs = args.envs.split(",")
    unknown = [e for e in envs if e not in EXPERTS]
    if unknown:
        p.error(f"unknown env {', '.join(unknown)}; choices: {', '.join(EXPERTS)}")
    manifest_path = EXPERTS_DIR / "experts.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        for env in envs:
            manifest[env] = train_expert(env, Path(tmp))
            manifest_path.write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")


if __name__ == "__main__":
    main()
