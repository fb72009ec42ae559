"""`rl-collect run=<run dir>`: roll out a trained policy and write a dataset file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from rl_runner import fileio
from rl_runner.collection import metadata, rollout
from rl_runner.datasets import Dataset, save_dataset
from rl_runner.errors import UserError
from rl_runner.options import Option, run_tool
from rl_runner.checkpoint import load_checkpoint
from rl_runner.policy import Policy, load_policy
from rl_runner.replay import check_buffer_state

SUMMARY = ("Roll out a trained policy and write its transitions as a dataset (.npz; format in "
           "docs/datasets.md) for bc, gail and cql. Give episodes=N or steps=N; or write an "
           "off-policy run's saved replay buffer with source=replay.")
OPTIONS = {
    "run": Option(None, str, "the run directory of the policy"),
    "checkpoint": Option("best", str, "best (last.pt where no best.pt), last, or a .pt file "
                                      "inside the run"),
    "episodes": Option(None, int | None, "whole episodes to collect (10 when steps is not set)"),
    "steps": Option(None, int | None, "env steps to collect; the last episode may be cut, its last "
                                      "step marked truncated"),
    "deterministic": Option(True, bool, "act with the policy's mode; false samples actions"),
    "noise": Option(0.0, float, "Box: Gaussian action noise, std as a fraction of half the "
                                "action range, clipped to the bounds"),
    "epsilon": Option(0.0, float, "probability of a uniform random action instead of the "
                                  "policy's at each step"),
    "seed": Option(0, int, "episode i starts from seed + i; noise and random actions too"),
    "out": Option(None, str | None, "the dataset file; null: <run>/datasets/<name>.npz; an "
                                    "existing file is never replaced"),
    "source": Option("policy", str, "policy: roll the policy out; replay: the replay buffer "
                                    "that an off-policy run saved in last.pt "
                                    "(trainer.save_replay_buffer=true), oldest row first"),
}


def collect(opts: dict[str, Any]) -> Path:
    if opts["run"] is None:
        raise UserError("run=<run directory> is required")
    episodes, steps = opts["episodes"], opts["steps"]
    if episodes is not None and steps is not None:
        raise UserError("give episodes=N or steps=N, not both")
    if episodes is None and steps is None:
        episodes = 10
    if (episodes if steps is None else steps) <= 0:
        raise UserError(f"{'episodes' if steps is None else 'steps'} must be positive")
    if not 0.0 <= opts["epsilon"] <= 1.0:
        raise UserError(f"epsilon={opts['epsilon']} must lie in [0, 1]")
    if opts["noise"] < 0 or opts["seed"] < 0:
        raise UserError(f"noise={opts['noise']} and seed={opts['seed']} must not be negative")
    run = Path(opts["run"])
    if opts["source"] not in ("policy", "replay"):
        raise UserError(f"source={opts['source']!r} is not known; allowed: policy, replay")
    if opts["source"] == "replay":
        return write_replay(run, opts)
    policy = load_policy(run, opts["checkpoint"])
    out = Path(opts["out"]) if opts["out"] else run / "datasets" / default_name(policy, opts,
                                                                                  episodes, steps)
    check_out(out)
    data = rollout(policy, episodes, steps, opts)
    save_dataset(out, data)
    rets = data.metadata["episode_returns"]
    summary = (f"return {np.mean(rets):.2f} +- {np.std(rets):.2f} over {len(rets)} complete "
               "episodes" if rets else "no complete episode")
    print(f"wrote {out}: {len(data)} transitions, {summary}")
    return out


def write_replay(run: Path, opts: dict) -> Path:
    """The replay buffer saved in <run>/checkpoints/last.pt as a dataset: e.g. the "medium-replay"
    data of an off-policy run stopped before it was good."""
    policy = load_policy(run, "last")
    buffer = load_checkpoint(policy.checkpoint).get("replay_buffer")
    if buffer is None:
        raise UserError(f"{policy.checkpoint} holds no replay buffer; train with "
                        "trainer.save_replay_buffer=true (off-policy algorithms)")
    if isinstance(buffer, dict) and buffer.get("kind") in ("frames", "images"):
        raise UserError(f"{policy.checkpoint}: its replay buffer holds image frames; "
                        "rl-collect source=replay takes runs on vector observations only "
                        "(source=policy collects image datasets)")
    env = policy.make_env()
    obs_dim = int(np.prod(env.observation_space.shape))
    env.close()
    try:
        check_buffer_state(buffer, policy.algo.buffer_size,
                           2 * obs_dim + policy.algo.buffer_action_dim + 2)
    except ValueError as e:
        raise UserError(f"{policy.checkpoint}: its replay buffer does not fit the run ({e})") \
            from None
    out = Path(opts["out"]) if opts["out"] else run / "datasets" / "replay.npz"
    check_out(out)
    data = replay_rows(policy, buffer)
    save_dataset(out, data)
    print(f"wrote {out}: {len(data)} transitions from the replay buffer of "
          f"{policy.env_steps} env steps")
    return out


def check_out(out: Path) -> None:
    """Before the rollout, not after it: `out` must be new and its folder writable."""
    if out.exists():
        raise UserError(f"{out} already exists; choose another out=")
    fileio.check_writable(out.parent, create=False)


def replay_rows(policy: Policy, buffer: dict) -> Dataset:
    """Rows oldest first; actions back in the env's units. A buffer keeps no time-limit ends:
    truncations are all false, and episode_starts mark the first row and rows after a
    termination (with several envs, their steps interleave)."""
    rows, size, pos = buffer["data"], buffer["size"], buffer["pos"]
    if size == buffer["capacity"]:  # the ring wrapped: the oldest row is the next to be written
        rows = np.concatenate([rows[pos:], rows[:pos]])
    algo = policy.algo
    obs_dim = (rows.shape[1] - 2 - algo.buffer_action_dim) // 2
    a_end = obs_dim + algo.buffer_action_dim
    actions = rows[:, obs_dim:a_end]
    env = policy.make_env()
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    actions = actions[:, 0].astype(np.int64) if discrete else algo.to_env(actions)
    terminated = rows[:, a_end + 1] > 0.5
    starts = np.concatenate([[True], terminated[:-1]])
    meta = metadata(policy, env, None, len(rows), {"deterministic": None, "noise": 0.0,
                                                   "epsilon": 0.0, "seed": None}, [], [])
    env.close()
    meta["collection"] = {"source": "replay", "rows": len(rows)}
    return Dataset(observations=rows[:, :obs_dim].copy(),
                   actions=np.asarray(actions, np.int64 if discrete else np.float32),
                   rewards=rows[:, a_end].copy(), next_observations=rows[:, a_end + 2:].copy(),
                   terminations=terminated, truncations=np.zeros(len(rows), bool),
                   episode_starts=starts, metadata=meta)


def default_name(policy: Policy, opts: dict, episodes: int | None, steps: int | None) -> str:
    parts = [policy.checkpoint.stem, f"ep{episodes}" if steps is None else f"steps{steps}",
             f"s{opts['seed']}"]
    if not opts["deterministic"]:
        parts.append("stochastic")
    if opts["noise"]:
        parts.append(f"noise{opts['noise']:g}")
    if opts["epsilon"]:
        parts.append(f"eps{opts['epsilon']:g}")
    return "_".join(parts) + ".npz"


def main(argv: list[str] | None = None) -> None:
    run_tool("rl-collect", SUMMARY, OPTIONS, collect, argv)


if __name__ == "__main__":
    main()
