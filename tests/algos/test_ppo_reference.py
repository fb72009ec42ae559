"""PPO's numpy update against plain torch autograd, with several shuffled minibatches per epoch.

The reference is written from the paper's loss with torch.distributions, separate actor and critic
tensors, torch.optim.Adam and clip_grad_norm_: nothing of rl_runner's networks, heads, kernels or
optimizer. It reproduces PPO's minibatch order by drawing the same permutations from a copy of
the algorithm's generator (one `permutation(size)[:used]` per epoch, as PPO.update draws them).
"""
from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Normal

from rl_runner.algos.base import Rollout, gae
from rl_runner.algos.ppo import PPO
from tests.algos.helpers import CARTPOLE_OBS, PENDULUM_ACT, PENDULUM_OBS, collect, params

N_STEPS, N_ENVS = 32, 2  # a rollout of 64 samples


def make_ppo(kind: str, **kw) -> PPO:
    space = dict(discrete=(CARTPOLE_OBS, gym.spaces.Discrete(2)),
                 box=(PENDULUM_OBS, PENDULUM_ACT))[kind]
    return PPO(observation_space=space[0], action_space=space[1], n_envs=N_ENVS,
               total_steps=10_000, seed=3, n_steps=N_STEPS, n_epochs=3, clip_coef=0.2, **kw)


class TorchPPO:
    """PPO's clipped-surrogate update with autograd, on copies of the algorithm's weights."""

    def __init__(self, algo: PPO):
        body = algo.net.body
        # ParallelMLP stacks [actor, critic] along dim 0 of every weight [2, in, out]
        self.actor = [(w[0].detach().clone().requires_grad_(), b[0, 0].detach().clone()
                       .requires_grad_()) for w, b in zip(body.weights, body.biases)]
        self.critic = [(w[1].detach().clone().requires_grad_(), b[1, 0].detach().clone()
                        .requires_grad_()) for w, b in zip(body.weights, body.biases)]
        self.log_std = (None if algo.net.log_std is None
                        else algo.net.log_std.detach().clone().requires_grad_())
        self.act = {"tanh": torch.tanh, "relu": torch.relu}[body.activation]
        self.params = [t for layer in self.actor + self.critic for t in layer]
        self.params += [] if self.log_std is None else [self.log_std]
        self.opt = torch.optim.Adam(self.params, lr=algo.lr, eps=1e-5)
        self.algo = algo

    def mlp(self, layers, x: torch.Tensor) -> torch.Tensor:
        for i, (w, b) in enumerate(layers):
            x = x @ w + b
            if i < len(layers) - 1:
                x = self.act(x)
        return x

    def dist(self, obs: torch.Tensor):
        out = self.mlp(self.actor, obs)
        if self.log_std is None:
            return Categorical(logits=out)
        return Normal(out, self.log_std.exp())

    def log_prob_entropy(self, obs, actions):
        d = self.dist(obs)
        if self.log_std is None:
            return d.log_prob(actions), d.entropy()
        return d.log_prob(actions).sum(-1), d.entropy().sum(-1)

    def update(self, batch: Rollout, rng: np.random.Generator, per_minibatch_norm: bool = True,
               shuffle: bool = True) -> list[torch.Tensor]:
        """The update; the two switches give wrong variants, to show the comparison can fail."""
        a = self.algo
        adv, ret = gae(batch.rewards, batch.values, batch.next_values,
                       batch.dones.astype(np.float32), a.gamma, a.gae_lambda)
        size = adv.size
        def flat(x: np.ndarray) -> torch.Tensor:  # [T, N, ...] -> [T * N, ...]
            return torch.from_numpy(np.ascontiguousarray(x).reshape(size, *x.shape[2:]))

        obs, act, old_logp = flat(batch.obs), flat(batch.actions), flat(batch.log_probs)
        adv, ret = flat(adv), flat(ret.astype(np.float32))
        if not per_minibatch_norm:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        n_mb = size // a.batch_size
        for _ in range(a.n_epochs):
            perm = rng.permutation(size)[:n_mb * a.batch_size]
            if not shuffle:
                perm = np.arange(n_mb * a.batch_size)
            for mb in np.split(perm, n_mb):
                mb = torch.from_numpy(mb)
                mb_adv = adv[mb]
                if per_minibatch_norm:
                    mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                logp, entropy = self.log_prob_entropy(obs[mb], act[mb])
                ratio = (logp - old_logp[mb]).exp()
                pg_loss = -torch.min(ratio * mb_adv,
                                     ratio.clamp(1 - a.clip_coef, 1 + a.clip_coef) * mb_adv).mean()
                v = self.mlp(self.critic, obs[mb])[:, 0]
                v_loss = ((v - ret[mb]) ** 2).mean()
                loss = pg_loss + a.vf_coef * v_loss - a.ent_coef * entropy.mean()
                self.opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.params, a.max_grad_norm)
                self.opt.step()
        return self.as_algo_params()

    def as_algo_params(self) -> list[torch.Tensor]:
        """The parameters in the layout of algo.net.parameters()."""
        ws = [torch.stack([wa, wc]) for (wa, _), (wc, _) in zip(self.actor, self.critic)]
        bs = [torch.stack([ba, bc]).unsqueeze(1) for (_, ba), (_, bc) in zip(self.actor,
                                                                             self.critic)]
        names = [n for n, _ in self.algo.net.named_parameters()]
        by_name = {f"body.weights.{i}": w for i, w in enumerate(ws)}
        by_name |= {f"body.biases.{i}": b for i, b in enumerate(bs)}
        if self.log_std is not None:
            by_name["log_std"] = self.log_std
        return [by_name[n].detach().clone() for n in names]


def perturbed_rollout(algo: PPO, kind: str) -> Rollout:
    """A real rollout with old log-probs moved off the current policy's, so the clip is active."""
    batch = collect(algo, "CartPole-v1" if kind == "discrete" else "Pendulum-v1", N_ENVS)
    r = np.random.default_rng(0)
    return batch._replace(
        log_probs=(batch.log_probs + r.normal(0, 0.3, batch.log_probs.shape)).astype(np.float32))


def assert_same(mine: list[torch.Tensor], ref: list[torch.Tensor]) -> None:
    assert len(mine) == len(ref)
    for m, r in zip(mine, ref):
        torch.testing.assert_close(m, r, rtol=1e-5, atol=1e-6)  # seen: ~3e-8 apart


def max_gap(mine: list[torch.Tensor], ref: list[torch.Tensor]) -> float:
    return max(float((m - r).abs().max()) for m, r in zip(mine, ref))


# batch 16: four full minibatches; batch 24: two, and 16 samples left out of each epoch
@pytest.mark.parametrize("batch_size", [16, 24])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("kind", ["discrete", "box"])
def test_minibatch_update_matches_torch_autograd(kind, activation, batch_size):
    algo = make_ppo(kind, batch_size=batch_size, activation=activation)
    batch = perturbed_rollout(algo, kind)
    ref = TorchPPO(algo)
    expected = ref.update(batch, copy.deepcopy(algo.rng))
    before = params(algo)
    metrics = algo.update(batch)
    assert 0.05 < metrics["clipfrac"] < 0.95
    assert algo.grad_steps == 3 * (64 // batch_size)
    mine = params(algo)
    assert max_gap(mine, before) > 1e-3  # the update moved the parameters well past the tolerance
    assert_same(mine, expected)


@pytest.mark.parametrize("kind", ["discrete", "box"])
def test_the_reference_tells_the_minibatch_details_apart(kind):
    """The comparison above is sharp enough to see the minibatch order and where the
    advantages are standardised: references that get either wrong do not match."""
    algo = make_ppo(kind, batch_size=16)
    batch = perturbed_rollout(algo, kind)
    rng = copy.deepcopy(algo.rng)
    wrong_norm = TorchPPO(algo).update(batch, copy.deepcopy(rng), per_minibatch_norm=False)
    wrong_order = TorchPPO(algo).update(batch, copy.deepcopy(rng), shuffle=False)
    algo.update(batch)
    for wrong in (wrong_norm, wrong_order):
        with pytest.raises(AssertionError):
            assert_same(params(algo), wrong)
