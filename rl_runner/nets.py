"""Small networks and action distributions, written for low per-call overhead on CPU."""
from __future__ import annotations

import contextlib
import math

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from rl_runner.encoders import EncoderSpec, make_cnn

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}
LOG_2PI = math.log(2 * math.pi)


class ParallelMLP(nn.Module):
    """K MLPs of the same shape evaluated with one batched matmul per layer.

    An actor and a critic of equal hidden sizes become one chain of `baddbmm` calls, which halves
    the number of small kernels per forward and backward (the cost that dominates on CPU).
    Output shape: [K, B, out_dim].
    """

    def __init__(self, in_dim: int, hidden_sizes: list[int], out_dim: int, k: int,
                 activation: str = "tanh", hidden_gain: float = math.sqrt(2),
                 out_gains: tuple[float, ...] | None = None, init: str = "orthogonal"):
        """init: "orthogonal" with the gains (the PPO implementation details, Engstrom et al.
        2020), or "torch", nn.Linear's own (weights and biases uniform in +-1/sqrt(fan_in):
        SB3's and CleanRL's DQN Q-networks)."""
        super().__init__()
        if init not in ("orthogonal", "torch"):
            raise ValueError(f"init={init!r}; allowed: orthogonal, torch")
        sizes = [in_dim, *hidden_sizes, out_dim]
        self.k = k
        self.activation = activation
        self.act = ACTIVATIONS[activation]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        out_gains = out_gains or (1.0,) * k
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            w, bias = torch.empty(k, a, b), torch.zeros(k, 1, b)
            last = i == len(sizes) - 2
            if init == "torch":  # kaiming_uniform(a=sqrt(5)) of nn.Linear: U(+-1/sqrt(fan_in))
                bound = 1.0 / math.sqrt(a)
                nn.init.uniform_(w, -bound, bound)
                nn.init.uniform_(bias, -bound, bound)
            else:
                for j in range(k):
                    nn.init.orthogonal_(w[j].T, gain=out_gains[j] if last else hidden_gain)
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(bias))
        # plain list: indexing a ParameterList costs ~5 us per access in the hot loop
        self._layers = list(zip(self.weights, self.biases))

    def _apply(self, fn, recurse=True):
        """.to(device) and the like may replace the Parameter objects: index the new ones."""
        module = super()._apply(fn, recurse)
        self._layers = list(zip(self.weights, self.biases))
        return module

    def forward(self, x_BI: torch.Tensor) -> torch.Tensor:
        h = x_BI.unsqueeze(0).expand(self.k, *x_BI.shape)
        last = len(self._layers) - 1
        for i, (w, b) in enumerate(self._layers):
            h = torch.baddbmm(b, h, w)
            if i < last:
                h = self.act(h)
        return h


class ActionDist:
    """Categorical (Discrete) or diagonal Gaussian with state-independent log-std (Box).

    Plain tensor math instead of torch.distributions: no argument validation, no object per call.
    For the losses that torch autograd differentiates (the torch path of pg, ppo and trpo); the
    numpy path uses its twin in heads.py.
    """

    def __init__(self, action_space: gym.Space):
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if self.discrete:
            self.n_out = int(action_space.n)
            self.action_shape: tuple[int, ...] = ()
        else:
            self.n_out = int(np.prod(action_space.shape))
            self.action_shape = tuple(action_space.shape)

    def sample(self, out_BA: torch.Tensor, log_std_A: torch.Tensor | None,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw actions and their log-probabilities."""
        if self.discrete:
            logp_BA = torch.log_softmax(out_BA, dim=-1)
            u = torch.rand(out_BA.shape, generator=gen).clamp_(min=1e-20)
            actions_B = torch.argmax(logp_BA - torch.log(-torch.log(u)), dim=-1)  # Gumbel-max
            return actions_B, logp_BA.gather(1, actions_B.unsqueeze(1)).squeeze(1)
        noise = torch.randn(out_BA.shape, generator=gen)
        actions = out_BA + noise * log_std_A.exp()
        logp = (-0.5 * noise.pow(2) - log_std_A - 0.5 * LOG_2PI).sum(-1)
        return actions, logp

    def mode(self, out_BA: torch.Tensor) -> torch.Tensor:
        return out_BA.argmax(-1) if self.discrete else out_BA

    def log_prob_entropy(self, out_BA: torch.Tensor, log_std_A: torch.Tensor | None,
                         actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.discrete:
            logp_BA = torch.log_softmax(out_BA, dim=-1)
            entropy = -(logp_BA.exp() * logp_BA).sum(-1)
            return logp_BA.gather(1, actions.long().unsqueeze(1)).squeeze(1), entropy
        z = (actions - out_BA) / log_std_A.exp()
        logp = (-0.5 * z.pow(2) - log_std_A - 0.5 * LOG_2PI).sum(-1)
        entropy = (log_std_A + 0.5 * (1.0 + LOG_2PI)).sum().expand(out_BA.shape[0])
        return logp, entropy

    def kl(self, old_out: torch.Tensor, new_out: torch.Tensor, old_log_std: torch.Tensor | None,
           new_log_std: torch.Tensor | None) -> torch.Tensor:
        """KL(old || new) per sample, in closed form."""
        if self.discrete:
            old_logp = torch.log_softmax(old_out, -1)
            return (old_logp.exp() * (old_logp - torch.log_softmax(new_out, -1))).sum(-1)
        var_old, var_new = (2 * old_log_std).exp(), (2 * new_log_std).exp()
        return (new_log_std - old_log_std + (var_old + (old_out - new_out).pow(2)) / (2 * var_new)
                - 0.5).sum(-1)


class ActorCritic(nn.Module):
    """Separate actor and critic MLPs (as SB3's MlpPolicy), run together by ParallelMLP."""

    def __init__(self, obs_dim: int, action_space: gym.Space, hidden_sizes: list[int],
                 activation: str = "tanh", log_std_init: float = 0.0):
        super().__init__()
        self.dist = ActionDist(action_space)
        self.body = ParallelMLP(obs_dim, list(hidden_sizes), self.dist.n_out, k=2,
                                activation=activation, out_gains=(0.01, 1.0))
        self.log_std = None if self.dist.discrete else nn.Parameter(
            torch.full((self.dist.n_out,), float(log_std_init)))

    def forward(self, obs_BD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Actor output (logits or mean) [B, A] and value [B]."""
        out = self.body(obs_BD)
        return out[0], out[1, :, 0]

    def infer(self, obs_BD: torch.Tensor, version: object) -> tuple[torch.Tensor, torch.Tensor]:
        """forward, for acting (CnnActorCritic.infer's interface)."""
        return self(obs_BD)

    def policy_out(self, obs_BD: torch.Tensor) -> torch.Tensor:
        return self.body(obs_BD)[0]  # the stacked layers compute the critic alongside

    def value_out(self, obs_BD: torch.Tensor) -> torch.Tensor:
        return self.body(obs_BD)[1, :, 0]

    def actor_elements(self) -> list[tuple[int, int]]:
        """Per parameter (in `parameters()` order): the range of its flattened elements that
        belong to the actor. Row 0 of each stacked ParallelMLP tensor is the actor's."""
        stacked = {id(p) for p in self.body.parameters()}
        return [(0, p.numel() // self.body.k) if id(p) in stacked else (0, p.numel())
                for p in self.parameters()]


class CnnActorCritic(nn.Module):
    """A Nature CNN encoder under a linear actor head (gain 0.01) and a linear critic head (gain
    1), as SB3's CnnPolicy and CleanRL's Atari PPO; same outputs as ActorCritic.

    `shared=False` gives the critic its own encoder: trpo's value fit must not move the policy
    outside the trust region its natural-gradient step keeps. `precision="bf16"`: the layers
    run under torch.autocast in bfloat16 (parameters, gradients and outputs stay float32).
    """

    def __init__(self, obs_space: gym.Space, action_space: gym.Space, spec: EncoderSpec,
                 log_std_init: float = 0.0, shared: bool = True, precision: str = "fp32"):
        super().__init__()
        self.bf16 = precision == "bf16"
        self._args = (obs_space, action_space, spec, log_std_init, shared)
        self._twin: list = []  # infer's bfloat16 copy: [version, net]
        self.dist = ActionDist(action_space)
        self.encoder = make_cnn(obs_space, spec)
        self.critic_encoder = None if shared else make_cnn(obs_space, spec)
        self.actor = nn.Linear(self.encoder.out_dim, self.dist.n_out)
        self.critic = nn.Linear(self.encoder.out_dim, 1)
        for head, gain in ((self.actor, 0.01), (self.critic, 1.0)):
            nn.init.orthogonal_(head.weight, gain)
            nn.init.zeros_(head.bias)
        self.log_std = None if self.dist.discrete else nn.Parameter(
            torch.full((self.dist.n_out,), float(log_std_init)))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast():
            h = self.encoder(obs)
            h_critic = h if self.critic_encoder is None else self.critic_encoder(obs)
            out, v = self.actor(h), self.critic(h_critic)[:, 0]
        return out.float(), v.float()

    def policy_out(self, obs: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.actor(self.encoder(obs)).float()

    def value_out(self, obs: torch.Tensor) -> torch.Tensor:
        encoder = self.encoder if self.critic_encoder is None else self.critic_encoder
        with self.autocast():
            return self.critic(encoder(obs))[:, 0].float()

    def infer(self, obs: torch.Tensor, version: object) -> tuple[torch.Tensor, torch.Tensor]:
        """forward, for acting (under the caller's inference_mode). In bfloat16 it runs a copy
        of the net in bfloat16, made again when `version` (the caller's tag of the weights)
        changes: autocast casts every weight at every call (8 Breakout frames on a Zen 4: 1.7 ->
        1.3 ms on one thread, 1.0 -> 0.82 ms on two). The same bits as forward
        (tests/test_encoders.py)."""
        if not self.bf16:
            return self(obs)
        if not self._twin or self._twin[0] != version:
            with torch.inference_mode(False), torch.no_grad():
                twin = self._twin[1] if self._twin else CnnActorCritic(*self._args).to(
                    device=self.actor.weight.device, dtype=torch.bfloat16)
                twin.load_state_dict(self.state_dict())  # copy_ casts to bfloat16
            self._twin[:] = [version, twin]
        out, v = self._twin[1](obs)
        return out.float(), v.float()

    def autocast(self):
        """bfloat16 autocast on the parameters' device where asked for, else nothing."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.actor.weight.device.type, dtype=torch.bfloat16)

    def actor_elements(self) -> list[tuple[int, int]]:
        """As ActorCritic.actor_elements: with a shared encoder the encoder counts as the
        actor's too."""
        critic = {id(p) for m in (self.critic, self.critic_encoder) if m is not None
                  for p in m.parameters()}
        return [(0, 0) if id(p) in critic else (0, p.numel()) for p in self.parameters()]
