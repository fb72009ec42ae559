"""REINFORCE with a linear softmax policy: the smallest on-policy algorithm rl-run trains."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from rl_runner.algos.base import gae
from rl_runner.algos.contracts import OnPolicy
from rl_runner.batches import Rollout
from rl_runner.params import NonNegativeFloat, PositiveInt


class MyAlgo(OnPolicy):  # the trainer feeds `update` fresh rollouts of n_steps x n_envs
    name = "myalgo"  # the algo= choice (conf/algo/myalgo.yaml)
    action_spaces = (gym.spaces.Discrete,)

    def __init__(self, *, observation_space: gym.Space, action_space: gym.Space, n_envs: int,
                 total_steps: int, seed: int = 0, lr: NonNegativeFloat = 1e-2,
                 n_steps: PositiveInt = 64):
        torch.manual_seed(seed)
        self.n_steps = n_steps
        self.policy = torch.nn.Linear(int(np.prod(observation_space.shape)), int(action_space.n))
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=lr)
        self.rng = np.random.default_rng(seed)
        self.grad_steps = 0

    def _logits(self, obs: np.ndarray) -> torch.Tensor:
        return self.policy(torch.as_tensor(obs, dtype=torch.float32).reshape(len(obs), -1))

    @torch.no_grad()
    def explore(self, obs: np.ndarray) -> tuple[np.ndarray, ...]:
        """(env_actions, actions, log_probs, values, policy_obs); no critic: values are 0."""
        logp_BA = torch.log_softmax(self._logits(obs), -1).numpy()
        gumbel_BA = -np.log(-np.log(self.rng.random(logp_BA.shape)))
        actions = (logp_BA + gumbel_BA).argmax(-1)
        logp = logp_BA[np.arange(len(actions)), actions]
        return actions, actions, logp, self.value(obs), np.asarray(obs, np.float32)

    def value(self, obs: np.ndarray) -> np.ndarray:
        return np.zeros(len(obs), np.float32)

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        if not deterministic:
            return self.explore(obs)[0]
        with torch.no_grad():
            return self._logits(obs).argmax(-1).numpy()

    def update(self, batch: Rollout) -> dict[str, float]:
        # reward-to-go within the rollout (values are 0), normalised: the REINFORCE weights
        _, ret_TN = gae(batch.rewards, batch.values, batch.next_values,
                        batch.dones.astype(np.float32), gamma=0.99, lam=1.0)
        adv = torch.as_tensor((ret_TN - ret_TN.mean()) / (ret_TN.std() + 1e-8)).reshape(-1)
        logp_BA = torch.log_softmax(self._logits(batch.obs.reshape(adv.numel(), -1)), -1)
        actions = torch.as_tensor(batch.actions.reshape(-1), dtype=torch.long)
        loss = -(logp_BA.gather(1, actions[:, None])[:, 0] * adv).mean()
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.grad_steps += 1
        entropy = -(logp_BA.exp() * logp_BA).sum(-1).mean()
        return {"policy_loss": loss.item(), "entropy": entropy.item()}

    def state_dict(self) -> dict:
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": self.rng.bit_generator.state, "grad_steps": self.grad_steps}

    def load_state_dict(self, state: dict) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.grad_steps = state["grad_steps"]
