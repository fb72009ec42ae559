"""Roll a trained policy out in one env and keep its transitions as a Dataset (rl-collect, and
the bundled expert's cached demonstrations)."""
from __future__ import annotations

import datetime

import gymnasium as gym
import numpy as np
import tqdm

import rl_runner
from rl_runner.datasets import Dataset, describe_space
from rl_runner.encoders import is_image
from rl_runner.errors import UserError
from rl_runner.policy import Policy


def rollout(policy: Policy, episodes: int | None, steps: int | None, opts: dict,
            progress: bool = True) -> Dataset:
    """One env, episode i reset with seed + i; the policy acts on one observation at a time.
    The progress bar shows on a terminal only, and never with progress=False."""
    seed, noise, epsilon = opts["seed"], opts["noise"], opts["epsilon"]
    env = policy.make_env()  # env.kwargs and env.atari with evaluation settings: whole games
    # images stay uint8, as the env gives them (a quarter of float32's bytes)
    obs_dtype = np.uint8 if is_image(env.observation_space) else np.float32
    space = env.action_space
    space.seed(seed)
    rng = np.random.default_rng(seed)
    box = isinstance(space, gym.spaces.Box)
    if noise and not box:
        raise UserError(f"noise= is for Box actions; {policy.env_id} has {space} (use epsilon=)")
    rows: dict[str, list] = {k: [] for k in ("observations", "actions", "rewards",
                                             "next_observations", "terminations",
                                             "truncations", "episode_starts")}
    returns, lengths = [], []
    bar = tqdm.tqdm(total=steps or episodes, unit="step" if steps else "episode", leave=False,
                    dynamic_ncols=True, disable=None if progress else True)
    try:
        episode = 0
        while (steps is None and episode < episodes) or (steps is not None and
                                                         len(rows["rewards"]) < steps):
            obs, _ = env.reset(seed=seed + episode)
            total, length, done = 0.0, 0, False
            while not done:
                action = policy.act(np.asarray(obs, obs_dtype)[None], opts["deterministic"])[0]
                if box and noise:
                    half = (space.high - space.low) / 2
                    action = np.clip(action + noise * half * rng.standard_normal(action.shape),
                                     space.low, space.high).astype(space.dtype)
                if epsilon and rng.random() < epsilon:
                    action = space.sample()
                next_obs, reward, terminated, truncated, _ = env.step(action)
                cut = steps is not None and len(rows["rewards"]) + 1 >= steps
                done = terminated or truncated or cut
                for key, value in (("observations", obs), ("actions", action),
                                   ("rewards", reward), ("next_observations", next_obs),
                                   ("terminations", terminated),
                                   ("truncations", truncated or (cut and not terminated)),
                                   ("episode_starts", length == 0)):
                    rows[key].append(value)
                obs, total, length = next_obs, total + float(reward), length + 1
                if steps is not None:
                    bar.update(1)
            if terminated or truncated:
                returns.append(total)
                lengths.append(length)
            episode += 1
            if steps is None:
                bar.update(1)
    finally:
        bar.close()
        env.close()
    return Dataset(
        observations=np.asarray(rows["observations"], obs_dtype),
        actions=np.asarray(rows["actions"], np.float32 if box else np.int64),
        rewards=np.asarray(rows["rewards"], np.float32),
        next_observations=np.asarray(rows["next_observations"], obs_dtype),
        terminations=np.asarray(rows["terminations"], bool),
        truncations=np.asarray(rows["truncations"], bool),
        episode_starts=np.asarray(rows["episode_starts"], bool),
        metadata=metadata(policy, env, episodes, steps, opts, returns, lengths))


def metadata(policy: Policy, env: gym.Env, episodes, steps, opts: dict, returns: list,
             lengths: list) -> dict:
    return {
        "env_id": policy.env_id, "env_kwargs": policy.env_kwargs,
        "observation_space": describe_space(env.observation_space),
        "action_space": describe_space(env.action_space),
        "source": {"checkpoint": str(policy.checkpoint), "env_steps": policy.env_steps,
                   "algo": policy.algo.name, "seed": int(policy.config.seed)},
        "collection": {"episodes": episodes, "steps": steps,
                       **{k: opts[k] for k in ("deterministic", "noise", "epsilon", "seed")}},
        "episode_returns": returns, "episode_lengths": lengths,
        "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "rl_runner": rl_runner.__version__,
    }
