"""GAIL (Ho & Ermon 2016): adversarial imitation with an on-policy learner held inside.

A discriminator D(s, a) = P(the pair is the learner's) is trained to tell the learner's pairs from
the expert's; the learner (ppo, or trpo) gets r = -log D(s, a) in place of the env's reward, so it
is paid for pairs the discriminator takes for the expert's. The env's own return is still what
the trainer logs as charts/episodic_return. Observations reach D standardised with the expert
data's mean and std, actions one-hot (Discrete) or rescaled from the env's bounds to [-1, 1].
Image observations (algo.encoder auto or cnn) reach D as uint8 through a Nature CNN instead, the
action features joined to its output; the learner gets the same encoder keys and `device`
unless algo.learner_kwargs sets its own.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import get_class
from torch import nn

from rl_runner import config as config_checks
from rl_runner.algos import image_nets
from rl_runner.algos.base import box_bounds, to_unit_box
from rl_runner.algos.contracts import OnPolicy, constructor_params
from rl_runner.batches import Rollout
from rl_runner.datasets import Dataset
from rl_runner.encoders import EncoderKind, NatureCNN, make_cnn
from rl_runner.errors import UserError
from rl_runner.nets import ParallelMLP
from rl_runner.params import (NonNegativeFloat, NonNegativeInt, PositiveInt,
                               Sizes)

# the learner's reward from D's logit l = log(D / (1 - D)), D = P(learner):
# gail: -log D = softplus(-l), always positive, as Ho & Ermon pay it;
# airl: log(1 - D) - log D = -l, positive where the pair looks the expert's, negative elsewhere
# (the form of Fu et al. 2018's reward; no constant pay for merely staying in the episode)
REWARDS = ("gail", "airl")
log = logging.getLogger("rl_runner")
LEARNERS = {"ppo": "rl_runner.algos.ppo.PPO", "trpo": "rl_runner.algos.trpo.TRPO"}
ENCODER_KEYS = ("encoder", "cnn_channels", "cnn_kernels", "cnn_strides", "cnn_features")


@dataclass
class ImagePairs:
    """D's inputs for image observations: the uint8 images as the env gives them (never copied
    to float) and the action features [B, A]; indexed by rows like an array."""

    obs: np.ndarray | torch.Tensor
    act: np.ndarray | torch.Tensor

    def __len__(self) -> int:
        return len(self.obs)

    def __getitem__(self, rows) -> ImagePairs:
        return ImagePairs(self.obs[rows], self.act[rows])


class ImageDiscriminator(nn.Module):
    """logit D(s, a) = MLP([CNN(s), a]): the CNN reads the image, the action joins its features."""

    def __init__(self, cnn: NatureCNN, act_dim: int, hidden_sizes: list[int]):
        super().__init__()
        self.cnn = cnn
        self.head = ParallelMLP(cnn.out_dim + act_dim, list(hidden_sizes), 1, k=1,
                                activation="tanh")

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.cnn(obs), act], 1))[0, :, 0]


class GAIL(OnPolicy):
    name = "gail"
    uses_demonstrations = True

    def __init__(self, *, observation_space: gym.Space, action_space: gym.Space, n_envs: int,
                 total_steps: int, seed: int = 0, learner: Literal["ppo", "trpo"] = "ppo",
                 learner_kwargs: dict | None = None, disc_hidden_sizes: Sizes = (64, 64),
                 disc_lr: NonNegativeFloat = 3e-4, disc_steps: PositiveInt = 5,
                 disc_batch_size: PositiveInt = 256, grad_penalty: NonNegativeFloat = 0.0,
                 reward: Literal["gail", "airl"] = "gail", bc_init_steps: NonNegativeInt = 0,
                 encoder: EncoderKind = "auto", cnn_channels: Sizes = (32, 64, 64),
                 cnn_kernels: Sizes = (8, 4, 3), cnn_strides: Sizes = (4, 2, 1),
                 cnn_features: PositiveInt = 512, device: torch.device = torch.device("cpu")):
        if bc_init_steps and learner != "ppo":  # trpo's value steps share the actor's Adam
            raise UserError(f"algo.bc_init_steps={bc_init_steps} works with algo.learner=ppo, "
                            f"not {learner}")
        spec = image_nets.encoder_spec(encoder, cnn_channels, cnn_kernels, cnn_strides,
                                       cnn_features)
        self.image, self.device = spec.resolve(observation_space) == "cnn", torch.device(device)
        cls = get_class(LEARNERS[learner])
        kwargs = dict(learner_kwargs or {})
        config_checks.check_algo_kwargs(learner, cls, kwargs, config_checks.PROVIDED,
                                        prefix="algo.learner_kwargs.")
        takes = constructor_params(cls)
        shared = dict(zip(ENCODER_KEYS, (encoder, list(cnn_channels), list(cnn_kernels),
                                         list(cnn_strides), cnn_features)))
        kwargs = {**{k: v for k, v in shared.items() if k in takes}, **kwargs}
        if "device" in takes:
            kwargs["device"] = self.device
        elif self.device.type != "cpu":
            log.info("gail: its %s learner runs on the CPU (it takes no device)", learner)
        self.learner = cls(observation_space=observation_space, action_space=action_space,
                           n_envs=n_envs, total_steps=total_steps, seed=seed, **kwargs)
        self.disc_steps, self.disc_batch_size = disc_steps, disc_batch_size
        self.grad_penalty, self.reward = grad_penalty, reward
        self.bc_init_steps = bc_init_steps
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if self.discrete:
            self.n_actions, self.start = int(action_space.n), int(action_space.start)
            act_dim = self.n_actions
        else:
            self.center, self.scale = box_bounds(action_space, "gail", "rescales")
            act_dim = len(self.center)
        obs_dim = int(np.prod(observation_space.shape))
        if self.image:
            disc = ImageDiscriminator(make_cnn(observation_space, spec), act_dim,
                                      disc_hidden_sizes)
        else:
            disc = ParallelMLP(obs_dim + act_dim, list(disc_hidden_sizes), 1, k=1,
                               activation="tanh")
        self.disc = disc.to(self.device)
        self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=disc_lr)
        self.obs_mean = np.zeros(obs_dim, np.float32)
        self.obs_std = np.ones(obs_dim, np.float32)
        self.expert: np.ndarray | None = None  # D's inputs for every expert pair
        self.rng = np.random.default_rng(seed + 50_000)
        self._raw_obs: list[np.ndarray] = []  # the rollout's observations as the env gave them
        self.bc_loss: float | None = None

    # ---- the learner's on-policy interface ----------------------------------------------------
    @property
    def n_steps(self) -> int:
        return self.learner.n_steps

    @property
    def grad_steps(self) -> int:
        return self.learner.grad_steps

    def explore(self, obs: np.ndarray) -> tuple[np.ndarray, ...]:
        self._raw_obs.append(np.array(obs, None if self.image else np.float32))  # images: uint8
        return self.learner.explore(obs)

    def value(self, obs: np.ndarray) -> np.ndarray:
        return self.learner.value(obs)

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        return self.learner.act(obs, deterministic)

    # ---- discriminator ------------------------------------------------------------------------
    def fit_dataset(self, data: Dataset) -> None:
        """Expert statistics for D's observation scaling, and D's inputs for the expert pairs
        (images: not scaled here, and kept uint8)."""
        actions = data.actions - self.start if self.discrete else data.actions
        if self.image:
            obs = data.observations
        else:
            obs = data.observations.reshape(len(data), -1).astype(np.float32)
            self.obs_mean = obs.mean(0)
            self.obs_std = np.maximum(obs.std(0), 1e-6).astype(np.float32)
        self.expert = self.inputs(obs, actions)
        if self.bc_init_steps:  # on resume the checkpoint's learner then replaces this one
            log.info("cloning the expert data into the learner: %d steps", self.bc_init_steps)
            self.bc_loss = self.learner.clone(obs, np.asarray(actions), self.bc_init_steps,
                                              self.disc_batch_size, self.rng)

    def inputs(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray | ImagePairs:
        """[B, obs + action features]: scaled observations and one-hot (actions counted from
        0, as the learners act) or rescaled actions; for images, ImagePairs of the two."""
        if self.discrete:
            a = np.eye(self.n_actions, dtype=np.float32)[np.asarray(actions).reshape(-1)]
        else:
            a = to_unit_box(actions, self.center, self.scale)
        if self.image:
            return ImagePairs(np.asarray(obs), np.asarray(a, np.float32))
        x = (obs.reshape(len(obs), -1) - self.obs_mean) / self.obs_std
        return np.concatenate([x, a], 1).astype(np.float32)

    def on_device(self, x: np.ndarray | torch.Tensor | ImagePairs) -> torch.Tensor | ImagePairs:
        if isinstance(x, ImagePairs):
            return ImagePairs(torch.as_tensor(x.obs, device=self.device),
                              torch.as_tensor(x.act, device=self.device))
        return torch.as_tensor(x, device=self.device)

    def logits(self, x: np.ndarray | torch.Tensor | ImagePairs) -> torch.Tensor:
        x = self.on_device(x)
        if isinstance(x, ImagePairs):
            return self.disc(x.obs, x.act)
        return self.disc(x)[0, :, 0]

    def rewards(self, x: np.ndarray | ImagePairs) -> np.ndarray:
        """The learner's reward (REWARDS above), D the probability of the learner."""
        with torch.no_grad():
            logit = torch.cat([self.logits(x[c]) for c in image_nets.row_chunks(
                len(x), self.image)]) if self.image else self.logits(x)
            return (F.softplus(-logit) if self.reward == "gail" else -logit).cpu().numpy()

    def gradient_penalty(self, ex, lx, n: int) -> torch.Tensor:
        """Gulrajani et al. 2017: (||grad D|| - 1)^2 at points between expert and learner
        pairs; images are mixed as floats in [0, 1] (what the CNN makes of uint8 pixels)."""
        eps = torch.from_numpy(self.rng.random((n, 1), dtype=np.float32)).to(self.device)
        if not self.image:
            mix = (eps * ex + (1 - eps) * lx).requires_grad_(True)
            grad, = torch.autograd.grad(self.logits(mix).sum(), mix, create_graph=True)
            return self.grad_penalty * (grad.norm(dim=1) - 1).pow(2).mean()
        e_img = eps.reshape(n, *([1] * (ex.obs.dim() - 1)))
        obs = (e_img * ex.obs.float() + (1 - e_img) * lx.obs.float()) / 255.0
        obs.requires_grad_(True)
        act = (eps * ex.act + (1 - eps) * lx.act).requires_grad_(True)
        g_obs, g_act = torch.autograd.grad(self.disc(obs, act).sum(), (obs, act),
                                           create_graph=True)
        norm = (g_obs.reshape(n, -1).pow(2).sum(1) + g_act.pow(2).sum(1)).sqrt()
        return self.grad_penalty * (norm - 1).pow(2).mean()

    def disc_step(self, learner_x: np.ndarray | ImagePairs) -> dict[str, float]:
        """One Adam step on the discriminator's cross-entropy: learner pairs 1, expert pairs 0."""
        n = min(self.disc_batch_size, len(learner_x))
        lx = self.on_device(learner_x[self.rng.integers(0, len(learner_x), n)])
        ex = self.on_device(self.expert[self.rng.integers(0, len(self.expert), n)])
        l_logit, e_logit = self.logits(lx), self.logits(ex)
        loss = (F.binary_cross_entropy_with_logits(l_logit, torch.ones_like(l_logit))
                + F.binary_cross_entropy_with_logits(e_logit, torch.zeros_like(e_logit)))
        gp = torch.zeros((), device=self.device)
        if self.grad_penalty > 0:
            gp = self.gradient_penalty(ex, lx, n)
        self.disc_opt.zero_grad()
        (loss + gp).backward()
        self.disc_opt.step()
        return {"disc_loss": loss.item(), "disc_grad_penalty": gp.item(),
                "charts/disc_learner_acc": (l_logit > 0).float().mean().item(),
                "charts/disc_expert_acc": (e_logit < 0).float().mean().item()}

    # ---- learning -----------------------------------------------------------------------------
    def update(self, batch: Rollout) -> dict[str, float]:
        if self.expert is None:
            raise UserError("gail needs expert data: the trainer gives it from dataset.*")
        T, N = batch.rewards.shape
        raw = np.stack(self._raw_obs[-T:])
        self._raw_obs.clear()
        actions = batch.actions.reshape(T * N, *batch.actions.shape[2:])
        if not self.discrete:  # what the env received: the learner's samples, clipped
            actions = np.clip(actions, self.learner.low, self.learner.high)
        learner_x = self.inputs(raw.reshape(T * N, *raw.shape[2:]), actions)
        stats = [self.disc_step(learner_x) for _ in range(self.disc_steps)]
        rewards = self.rewards(learner_x).reshape(T, N).astype(np.float32)
        metrics = self.learner.update(batch._replace(rewards=rewards))
        metrics.update({k: float(np.mean([s[k] for s in stats])) for k in stats[0]})
        metrics["gail_reward"] = float(rewards.mean())
        if self.bc_loss is not None:  # the warm start's last loss, logged once
            metrics["bc_init_loss"], self.bc_loss = self.bc_loss, None
        return metrics

    # ---- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """CPU tensors, wherever D is (a GPU run's checkpoint loads on a CPU)."""
        return {"learner": self.learner.state_dict(),
                "disc": image_nets.to_cpu(self.disc.state_dict()),
                "disc_opt": image_nets.to_cpu(self.disc_opt.state_dict()),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.learner.load_state_dict(state["learner"])
        self.disc.load_state_dict(state["disc"])
        self.disc_opt.load_state_dict(state["disc_opt"])
        self.rng.bit_generator.state = state["rng"]
