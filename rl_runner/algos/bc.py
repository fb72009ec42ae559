"""Behavioural cloning: supervised learning of the dataset's actions from its observations.

Discrete actions by maximum likelihood (cross-entropy on the logits). Box actions, rescaled from
the env's bounds to [-1, 1], by the negative log-likelihood of a diagonal Gaussian with a learned
state-independent log-std, or by mean squared error of the mean (algo.loss=mse). Vector
observations are standardised with the training split's mean and std, fixed before the first
step; images (algo.encoder auto or cnn) go uint8 into a Nature CNN, which scales them to [0, 1].
"""
from __future__ import annotations

from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rl_runner.algos import image_nets
from rl_runner.algos.base import box_bounds, to_unit_box
from rl_runner.algos.contracts import Offline
from rl_runner.batches import OfflineBatch
from rl_runner.datasets import Dataset
from rl_runner.encoders import EncoderKind
from rl_runner.nets import LOG_2PI
from rl_runner.params import (Activation, HoldOut, NonNegativeFloat, PositiveInt,
                               Sizes)


class BC(Offline):
    name = "bc"

    def __init__(self, *, observation_space: gym.Space, action_space: gym.Space, n_envs: int,
                 total_steps: int, seed: int = 0, lr: NonNegativeFloat = 1e-3,
                 hidden_sizes: Sizes = (64, 64), activation: Activation = "relu",
                 batch_size: PositiveInt = 64, loss: Literal["nll", "mse"] = "nll",
                 val_fraction: HoldOut = 0.1, weight_decay: NonNegativeFloat = 0.0,
                 encoder: EncoderKind = "auto", cnn_channels: Sizes = (32, 64, 64),
                 cnn_kernels: Sizes = (8, 4, 3), cnn_strides: Sizes = (4, 2, 1),
                 cnn_features: PositiveInt = 512, device: torch.device = torch.device("cpu")):
        self.batch_size, self.loss, self.val_fraction = batch_size, loss, val_fraction
        self.obs_dim = int(np.prod(observation_space.shape))
        spec = image_nets.encoder_spec(encoder, cnn_channels, cnn_kernels, cnn_strides,
                                       cnn_features)
        kind = spec.resolve(observation_space)
        self.image, self.device = kind == "cnn", torch.device(device)
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if self.discrete:
            out = int(action_space.n)
            self.start = int(action_space.start)
        else:
            self.center, self.scale = box_bounds(action_space, "bc", "rescales")
            self.action_shape = tuple(action_space.shape)
            out = len(self.center)
        self.net = image_nets.make_net(observation_space, spec, kind, hidden_sizes, out,
                                       activation=activation, out_gains=(0.01,)).to(self.device)
        self.log_std = None if self.discrete else nn.Parameter(
            torch.zeros(out, device=self.device))
        params = [*self.net.parameters(), *([self.log_std] if self.log_std is not None else [])]
        self.optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        self.obs_mean = torch.zeros(self.obs_dim, device=self.device)
        self.obs_std = torch.ones(self.obs_dim, device=self.device)
        self.gen = torch.Generator().manual_seed(seed)
        self.grad_steps = 0

    # ---- data ---------------------------------------------------------------------------------
    def fit_dataset(self, train: Dataset) -> None:
        """Fix the observation statistics from the training split (before any step); images
        are not standardised (the CNN scales them)."""
        if self.image:
            return
        obs = torch.from_numpy(np.asarray(train.observations.reshape(len(train), -1),
                                          np.float32))
        self.obs_mean = obs.mean(0).to(self.device)
        self.obs_std = (obs.std(0, unbiased=False).clamp(min=1e-6) if len(obs) > 1 else
                        torch.ones(self.obs_dim)).to(self.device)

    def policy_actions(self, actions: np.ndarray) -> torch.Tensor:
        """Dataset actions as the loss takes them: indices, or Box actions in [-1, 1]."""
        if self.discrete:
            a = torch.from_numpy(np.asarray(actions, np.int64).reshape(-1) - self.start)
        else:
            a = torch.from_numpy(to_unit_box(actions, self.center, self.scale))
        return a.to(self.device)

    # ---- acting -------------------------------------------------------------------------------
    def _out(self, obs: np.ndarray) -> torch.Tensor:
        x = image_nets.obs_tensor(obs, self.image, self.device)
        return self.net(x if self.image else (x - self.obs_mean) / self.obs_std)[0]

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        out = self._out(obs).cpu()  # the sampling generator is the CPU's, as are the actions
        if self.discrete:
            if deterministic:
                return out.argmax(-1).numpy() + self.start
            return torch.multinomial(torch.softmax(out, -1), 1, generator=self.gen)[:, 0].numpy() \
                + self.start
        if not deterministic and self.loss == "nll":
            out = out + self.log_std.cpu().exp() * torch.randn(out.shape, generator=self.gen)
        a = np.clip(out.numpy(), -1.0, 1.0) * self.scale + self.center
        return a.reshape(len(obs), *self.action_shape)

    # ---- learning -----------------------------------------------------------------------------
    def loss_terms(self, obs: np.ndarray, actions: np.ndarray) -> torch.Tensor:
        out = self._out(obs)
        target = self.policy_actions(actions)
        if self.discrete:
            return F.cross_entropy(out, target)
        if self.loss == "mse":
            return F.mse_loss(out, target)
        # -log N(a; mu, sigma), summed over action dimensions, averaged over the batch
        z = (target - out) / self.log_std.exp()
        return (0.5 * z.pow(2) + self.log_std + 0.5 * LOG_2PI).sum(-1).mean()

    def update(self, batch: OfflineBatch) -> dict[str, float]:
        loss = self.loss_terms(batch.obs, batch.actions)
        self.optimizer.zero_grad(set_to_none=False)
        loss.backward()
        self.optimizer.step()
        self.grad_steps += 1
        metrics = {"bc_loss": loss.item()}
        if self.log_std is not None and self.loss == "nll":
            metrics["log_std"] = self.log_std.detach().mean().item()
        return metrics

    @torch.no_grad()
    def validate(self, val: Dataset) -> dict[str, float]:
        """The loss on the held-out split, and the share of its actions the policy's mode gets
        (images: chunk by chunk, the loss weighted by the chunks' rows)."""
        chunks = image_nets.row_chunks(len(val), self.image)
        obs, actions = val.observations, val.actions
        losses = [self.loss_terms(obs[c], actions[c]).item() for c in chunks]
        loss = losses[0] if len(chunks) == 1 else \
            sum(x * len(obs[c]) for x, c in zip(losses, chunks)) / len(val)
        mode = np.concatenate([self.act(obs[c], deterministic=True) for c in chunks])
        if self.discrete:
            match = float(np.mean(mode.reshape(-1) == val.actions.reshape(-1)))
            return {"val_loss": loss, "val_accuracy": match}
        err = np.abs(mode.reshape(len(mode), -1) - val.actions.reshape(len(mode), -1)).mean()
        return {"val_loss": loss, "val_action_error": float(err)}

    # ---- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """CPU tensors, wherever the networks are (a GPU run's checkpoint loads on a CPU)."""
        return image_nets.to_cpu({
            "net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
            "log_std": None if self.log_std is None else self.log_std.detach().clone(),
            "obs_mean": self.obs_mean.clone(), "obs_std": self.obs_std.clone(),
            "gen": self.gen.get_state(), "grad_steps": self.grad_steps})

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.log_std is not None:
            with torch.no_grad():
                self.log_std.copy_(state["log_std"])
        self.obs_mean = state["obs_mean"].clone().to(self.device)
        self.obs_std = state["obs_std"].clone().to(self.device)
        self.gen.set_state(state["gen"])
        self.grad_steps = state["grad_steps"]
