"""Rollouts for algorithm unit tests: real ones from a small vector env, and hand-made ones."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from rl_runner.algos.base import OnPolicyAlgorithm, Rollout
from rl_runner.envs import make_vec_env
from rl_runner.replay import ReplayBuffer
from rl_runner.rollout import RolloutCollector

CARTPOLE_OBS = gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
PENDULUM_OBS = gym.spaces.Box(-8.0, 8.0, (3,), np.float32)
PENDULUM_ACT = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)


def collect(algo: OnPolicyAlgorithm, env_id: str, n_envs: int, seed: int = 0) -> Rollout:
    envs = make_vec_env(env_id, n_envs)
    try:
        batch, _ = RolloutCollector(envs, algo.n_steps, seed).collect(algo)
    finally:
        envs.close()
    return batch


def params(algo: OnPolicyAlgorithm) -> list[torch.Tensor]:
    return [p.detach().clone() for p in algo.net.parameters()]


def bandit_rollout(algo: OnPolicyAlgorithm, T: int = 16, N: int = 2) -> Rollout:
    """One state, one-step episodes: action 0 pays 1, action 1 pays 0 (half the samples each)."""
    obs = np.zeros((T, N, 4), np.float32)
    actions = np.tile(np.array([0, 1]), T * N // 2).reshape(T, N)
    with torch.no_grad():
        out, v = algo.net(torch.from_numpy(obs.reshape(T * N, 4)))
        logp = algo.net.dist.log_prob_entropy(out, None, torch.from_numpy(actions.reshape(-1)))[0]
    rewards = (actions == 0).astype(np.float32)
    dones = np.ones((T, N), bool)
    return Rollout(obs, actions, logp.numpy().reshape(T, N), v.numpy().reshape(T, N), rewards,
                   dones, np.zeros((T, N), np.float32))


def prob_of_action_0(algo: OnPolicyAlgorithm) -> float:
    with torch.no_grad():
        out, _ = algo.net(torch.zeros(1, 4))
    return float(torch.softmax(out, -1)[0, 0])


def random_replay_batch(algo, n_batches: int = 1, seed: int = 0):
    """Minibatches of random transitions in an off-policy algorithm's policy space (a quarter
    terminal), sampled from a small ReplayBuffer."""
    rng = np.random.default_rng(seed)
    buf = ReplayBuffer(500, algo.obs_dim, algo.buffer_action_dim)
    obs = rng.normal(size=(500, algo.obs_dim)).astype(np.float32)
    buf.add(obs, algo.random_actions(500, rng), rng.normal(size=500), rng.random(500) < 0.25,
            obs + rng.normal(0, 0.1, obs.shape).astype(np.float32))
    return buf.sample(n_batches, algo.batch_size, rng)
