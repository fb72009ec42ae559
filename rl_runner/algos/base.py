"""Shared machinery of the bundled on-policy and off-policy algorithms (the contracts they fulfil
are in contracts.py).

The trainer owns environments, data feeding, logging, evaluation and checkpoints; an algorithm owns
its networks, optimizers, normalizer statistics and the update math. `update` returns its metrics.
"""
from __future__ import annotations

import logging
from typing import ClassVar, Literal

import gymnasium as gym
import numpy as np
import torch

from rl_runner.batches import Rollout
from rl_runner.algos import image_nets, torch_onpolicy
from rl_runner.algos.contracts import OffPolicy, OnPolicy
from rl_runner.encoders import EncoderKind
from rl_runner.errors import UserError
from rl_runner.heads import make_head
from rl_runner.kernels import MLPKernel
from rl_runner.nets import ActorCritic, CnnActorCritic
from rl_runner.normalize import ObsNormalizer, RewardScaler
from rl_runner.optim import FlatAdam, FlatParams
from rl_runner.params import (Activation, Fraction, NonNegativeFloat, NonNegativeInt,
                               PositiveInt, Sizes)


log = logging.getLogger(__name__)

Backend = Literal["auto", "numpy", "torch"]
Precision = Literal["auto", "fp32", "bf16"]


def resolve_backend(backend: str, encoder: str, device: torch.device) -> str:
    """'numpy' or 'torch'. auto: the numpy kernels for MLPs on the CPU (faster there for small
    networks), torch autograd for a CNN or a GPU, which the numpy kernels cannot run."""
    if backend == "auto":
        return "numpy" if encoder == "mlp" and device.type == "cpu" else "torch"
    if backend == "numpy" and (encoder == "cnn" or device.type != "cpu"):
        what = "a CNN encoder (image observations)" if encoder == "cnn" else f"device {device}"
        raise UserError(f"algo.backend=numpy runs MLPs on the CPU only, not {what}; "
                        "allowed here: auto, torch")
    return backend


def cpu_bf16_units() -> str | None:
    """The CPU's bfloat16 matrix instructions torch's oneDNN kernels use ('AMX-BF16',
    'AVX512-BF16'), or None where it has none (AMD Zen 1-3, older Intel, Arm without them)."""
    caps = getattr(torch.cpu, "get_capabilities", dict)()
    for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")):
        if caps.get(flag):
            return name
    return None


def resolve_precision(precision: str, encoder: str, device: torch.device, bf16_ok: bool,
                      who: str) -> str:
    """'fp32' or 'bf16'. auto: bf16 for a CNN on a CPU with bfloat16 units (measured 1.8x
    faster there), fp32 everywhere else (MLPs, GPUs: not measured, CPUs without the units);
    an explicit bf16 where it cannot apply is one line."""
    if precision == "auto":
        units = cpu_bf16_units() if device.type == "cpu" else None
        if encoder == "cnn" and bf16_ok and units:
            log.info("algo.precision=auto: bf16 (this CPU has %s); algo.precision=fp32 for "
                     "float32", units)
            return "bf16"
        return "fp32"
    if precision == "bf16" and not bf16_ok:
        raise UserError(f"algo.precision=bf16: {who}'s natural-gradient step needs "
                        "float32 products; allowed for it: auto, fp32")
    if precision == "bf16" and encoder != "cnn":
        raise UserError("algo.precision=bf16 runs the CNN of image observations in "
                        "bfloat16; this run's MLP takes vectors; allowed with it: auto, fp32")
    return precision


LOWP_FROM_MACS = 1 << 24  # see resolve_update_precision


def hidden_macs(hidden_sizes: list[int], batch_size: int) -> int:
    """Multiply-adds of a minibatch's widest hidden-to-hidden product (0: one hidden layer)."""
    h = hidden_sizes
    return batch_size * max((a * b for a, b in zip(h, h[1:])), default=0)


# multiply-adds in the widest hidden-layer matmul of a minibatch from which a second thread pays
# off. Update time on this 2-core CPU, 1 thread vs 2 (sac on Pendulum, best of 3 x 100 updates;
# Intel Xeon): 64x64 nets, batch 64: 4.4 vs 4.7 ms; 64x64/256 and 128x128/64 (1M): 6.1 vs 5.9,
# 5.4 vs 4.9; 128x128/256 and 256x256/64 (4.2M): 1.3x faster; 256x256/256 (16.8M): 26.7 vs
# 17.4 ms. dqn's cartpole preset (256x256/64), alternated in one process on a Zen 4: 74 vs 86 ms
# an update of 128 steps (medians of 7); td3's pendulum preset (400x300/256): 6.7 vs 11.1 ms.
THREADS_FROM_MACS = 1 << 20


def threads_for_macs(cores: int, macs: int) -> int:
    """trainer.torch_threads=auto for an MLP learner on the CPU: every core where a gradient
    step's widest hidden-layer matmul has `macs` >= THREADS_FROM_MACS multiply-adds, else one."""
    return cores if macs >= THREADS_FROM_MACS else 1


def resolve_update_precision(precision: str, device: torch.device, macs: int, who: str) -> str:
    """'fp32' or 'bf16' for the hand-written updates of td3 and ddpg; bf16 runs their hidden-to-
    hidden products in bfloat16 (mlp_forward's and mlp_backward's `lowp`). auto: bf16 on a CPU
    with bfloat16 units where that product has at least LOWP_FROM_MACS multiply-adds a
    minibatch, fp32 everywhere else. Update time fp32/bf16 on an AMD EPYC (Zen 4, AVX512-BF16),
    two threads, alternated in one process: [400, 300] x 256 rows 1.48x (one thread 1.68x),
    [256, 256] x 256 1.13x, x 128 1.02x, x 64 0.87x, [64, 64] x 256 0.80x: below ~2^23 the
    casts cost what the units save. GPUs: not measured; CPUs without the units have nothing to
    run it on. An explicit bf16 with no hidden-to-hidden product is one line; on a CPU without
    the units it runs, with a warning."""
    units = cpu_bf16_units() if device.type == "cpu" else None
    if precision == "bf16" and macs == 0:
        raise UserError(f"algo.precision=bf16 runs {who}'s hidden-to-hidden products in "
                        "bfloat16, and algo.hidden_sizes has one hidden layer (none of them); "
                        "allowed with it: auto, fp32")
    if precision == "bf16" and device.type == "cpu" and units is None:
        log.warning("algo.precision=bf16 on a CPU without bfloat16 units: nothing runs its "
                    "products natively, and they may well be slower than float32 "
                    "(algo.precision=auto picks fp32 here)")
    if precision != "auto":
        return precision
    if units and macs >= LOWP_FROM_MACS:
        log.info("algo.precision=auto: bf16 for %s's hidden-layer products (this CPU has %s); "
                 "algo.precision=fp32 for float32", who, units)
        return "bf16"
    return "fp32"


def gae(rewards_TN: np.ndarray, values_TN: np.ndarray, next_values_TN: np.ndarray,
        dones_TN: np.ndarray, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Generalized advantage estimation (Schulman et al. 2016, eq. 16); returns (adv, returns).

    With lam=1 the returns are the discounted reward-to-go, bootstrapped where a rollout or an
    episode was cut by a time limit.
    """
    adv_TN = np.zeros_like(values_TN)
    last = np.zeros(values_TN.shape[1], np.float32)
    not_done_TN = 1.0 - dones_TN
    deltas_TN = rewards_TN + gamma * next_values_TN - values_TN
    for t in reversed(range(len(rewards_TN))):
        last = deltas_TN[t] + gamma * lam * not_done_TN[t] * last
        adv_TN[t] = last
    return adv_TN, adv_TN + values_TN


class OnPolicyAlgorithm(OnPolicy):
    """Shared by pg, ppo and trpo: actor-critic networks, acting, normalisers, optimizer, state.

    The networks are torch modules (the model of record, saved in checkpoints). Two paths
    compute the gradients: numpy kernels on the same parameter memory (kernels.py; fastest for
    small MLPs on a CPU) or torch autograd (torch_onpolicy.py; images, GPUs). `backend` picks
    one; both share the network, FlatAdam, the numpy action sampling and the numpy RNG, so a
    checkpoint of either loads in the other.
    """

    shared_encoder: ClassVar[bool] = True  # a CNN encoder shared by actor and critic
    # algo.precision=bf16 allowed (trpo: not). Its acting copy (CnnActorCritic.infer) is made
    # again after an optimizer step or a load: an algorithm that moves the weights otherwise
    # must not allow it
    bf16_ok: ClassVar[bool] = True

    def __init__(self, *, observation_space: gym.Space, action_space: gym.Space, n_envs: int,
                 total_steps: int, seed: int = 0, lr: NonNegativeFloat = 3e-4,
                 gamma: Fraction = 0.99, hidden_sizes: Sizes = (64, 64),
                 n_steps: PositiveInt = 2048, activation: Activation = "tanh",
                 log_std_init: float = 0.0, normalize_obs: bool = False,
                 normalize_reward: bool = False, max_grad_norm: NonNegativeFloat = 0.5,
                 anneal_lr: bool = False, anneal_steps: PositiveInt | None = None,
                 ent_coef: NonNegativeFloat = 0.0,
                 vf_coef: NonNegativeFloat = 0.5, norm_adv: bool = True,
                 backend: Backend = "auto", encoder: EncoderKind = "auto",
                 cnn_channels: Sizes = (32, 64, 64), cnn_kernels: Sizes = (8, 4, 3),
                 cnn_strides: Sizes = (4, 2, 1), cnn_features: PositiveInt = 512,
                 precision: Precision = "auto", device: torch.device = torch.device("cpu")):
        self.n_steps, self.n_envs, self.total_steps = n_steps, n_envs, total_steps
        self.hidden_sizes = list(hidden_sizes)
        self.lr, self.gamma, self.anneal_lr = lr, gamma, anneal_lr
        # the schedules' horizon: a run shorter than anneal_steps is the start of that run
        self.anneal_steps = max(total_steps, anneal_steps or 0)
        self.max_grad_norm, self.ent_coef, self.vf_coef = max_grad_norm, ent_coef, vf_coef
        self.norm_adv = norm_adv
        self.device = torch.device(device)
        spec = image_nets.encoder_spec(encoder, cnn_channels, cnn_kernels, cnn_strides,
                                       cnn_features)
        self.encoder = spec.resolve(observation_space)
        self.backend = resolve_backend(backend, self.encoder, self.device)
        if self.encoder == "cnn" and normalize_obs:
            raise UserError("algo.normalize_obs=true is for vector observations; the CNN scales "
                            "the env's uint8 images to [0, 1] itself; allowed with images: false")
        self.precision = resolve_precision(precision, self.encoder, self.device,
                                           self.bf16_ok, self.name)
        if self.encoder == "cnn":
            net = CnnActorCritic(observation_space, action_space, spec, log_std_init,
                                 shared=self.shared_encoder, precision=self.precision)
        else:
            net = ActorCritic(int(np.prod(observation_space.shape)), action_space,
                              list(hidden_sizes), activation, log_std_init)
        self.net = net.to(self.device)
        self.head = make_head(action_space)
        self.optimizer = self.make_optimizer(lr)
        has_std = self.net.log_std is not None
        on_cpu = self.device.type == "cpu"  # numpy views of the parameters exist there only
        self.log_std = self.net.log_std.detach().numpy() if has_std and on_cpu else None
        self.kernel: MLPKernel | None = None
        if self.backend == "numpy":
            # after make_optimizer: the kernel's views must point into its flat buffers
            self.kernel = MLPKernel(self.net.body)
            self._grad_ws = [w.grad.numpy() for w in self.net.body.weights]
            self._grad_bs = [b.grad.numpy() for b in self.net.body.biases]
            self._grad_log_std = self.net.log_std.grad.numpy() if has_std else None
            self._grad_out: dict[int, np.ndarray] = {}
        self.rng = np.random.default_rng(seed)
        self.obs_norm = ObsNormalizer(observation_space.shape, normalize_obs)
        self.reward_scaler = RewardScaler(n_envs, gamma, normalize_reward)
        if not self.head.discrete:
            self.low, self.high = action_space.low, action_space.high
        self.env_steps = 0
        self.grad_steps = 0
        self.weight_loads = 0  # load_state_dict calls: with optimizer steps, infer's version

    def preferred_threads(self, cores: int) -> int:
        """trainer.torch_threads=auto: every usable core for a CNN, whose convolutions split well
        (ppo breakout, Intel Xeon, 2 idle cores: 1.3-1.5x the env steps/s of one thread), and for
        an MLP whose widest hidden-layer product over a gradient step's rows reaches
        THREADS_FROM_MACS on the CPU, the off-policy learners' rule (ppo's cartpole preset, 256
        rows of 64x64: an update 1.22x faster on two threads, AMD EPYC Zen 5: docs/benchmarks.md);
        one thread for smaller MLPs (small ops) and on a GPU. The ThreadTuner then times updates
        on one thread and on every core now and then and keeps the faster, so a core taken by
        another process (where two spinning OpenMP threads ran 83 env steps/s against 307 on one)
        sends it back to one. The count changes a CNN's last bits, not the numpy MLP kernels'
        (README, Speed)."""
        if self.encoder == "cnn":
            return cores
        if self.device.type != "cpu":  # the products run on the device
            return 1
        return threads_for_macs(cores, hidden_macs(self.hidden_sizes, self.update_rows))

    @property
    def update_rows(self) -> int:
        """The rows one gradient step's products run on: the rollout (pg, a2c; trpo's policy
        step); ppo's minibatch."""
        return self.n_steps * self.n_envs

    def make_optimizer(self, lr: float) -> FlatParams:
        """The optimizer over self.net's parameters (a flat-buffer one: the numpy kernel takes
        views into its buffers). Adam here; a subclass may choose another (a2c: RMSprop)."""
        return FlatAdam(self.net.parameters(), lr=lr, eps=1e-5)

    # ---- acting -------------------------------------------------------------------------------
    def _to_env(self, actions: np.ndarray) -> np.ndarray:
        # the env gets clipped actions; the log-prob stays that of the raw sample
        return actions if self.head.discrete else np.clip(actions, self.low, self.high)

    def forward(self, policy_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Actor output [B, A] and value [B] by the numpy kernel (numpy path): views into work
        arrays reused by the next call."""
        out_KBA = self.kernel.forward(policy_obs.reshape(len(policy_obs), -1))
        return out_KBA[0], out_KBA[1, :, 0]

    def policy_obs(self, obs: np.ndarray, update: bool = False) -> np.ndarray:
        """What the networks take: normalised float32 vectors, or the env's uint8 images."""
        return np.asarray(obs) if self.encoder == "cnn" else self.obs_norm(obs, update=update)

    def outputs(self, policy_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Actor output [B, A] and value [B] as numpy arrays, on either path. The torch path
        copies them to the host in one piece: the numpy head samples from them there, so
        sampling uses the same numpy RNG on every backend and device."""
        if self.kernel is not None:
            return self.forward(policy_obs)
        with torch.inference_mode():
            # the weights change by an optimizer step or a load: their tag for infer's copy
            out, v = self.net.infer(self.obs_tensor(policy_obs),
                                    (self.optimizer.steps, self.weight_loads))
            both = torch.cat([out, v[:, None]], 1).cpu().numpy()
        return both[:, :-1], both[:, -1]

    def obs_tensor(self, policy_obs: np.ndarray) -> torch.Tensor:
        """Observations on the device in the network's layout; images stay uint8 (the CNN
        scales them), so a quarter of float32's bytes are copied. Channels-first frames come in
        the layout the convolutions run in (channels_last strides, the same shape): a rollout
        is rearranged once here, and its minibatches (gathered rows keep the layout) not at
        all in the CNN: ppo breakout, 256 frames forward and backward, 1 thread on an Intel
        Xeon, 139-143 ms against 150-161 ms."""
        x = torch.as_tensor(policy_obs, device=self.device)
        if self.encoder != "cnn":
            return x.reshape(len(x), -1)
        return x if self.net.encoder.channels_last else \
            x.contiguous(memory_format=torch.channels_last)

    def host_log_std(self) -> np.ndarray | None:
        if self.log_std is not None or self.net.log_std is None:
            return self.log_std
        return self.net.log_std.detach().cpu().numpy()

    def explore(self, obs: np.ndarray) -> tuple[np.ndarray, ...]:
        """Sample actions for a rollout: (env_actions, actions, log_probs, values, policy_obs)."""
        policy_obs = self.policy_obs(obs, update=True)
        out, value = self.outputs(policy_obs)
        actions, logp = self.head.sample(out, self.host_log_std(), self.rng)
        return self._to_env(actions), actions, logp, value.copy(), policy_obs

    def value(self, obs: np.ndarray) -> np.ndarray:
        return self.outputs(self.policy_obs(obs))[1].copy()

    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        out, _ = self.outputs(self.policy_obs(obs))
        if deterministic:
            return self._to_env(self.head.mode(out))
        return self._to_env(self.head.sample(out, self.host_log_std(), self.rng)[0])

    # ---- learning helpers ---------------------------------------------------------------------
    def progress(self) -> float:
        """How far the annealed schedules (anneal_lr, ppo's anneal_clip) have gone, 0 -> 1: over
        the budget, or over anneal_steps where that is longer."""
        return min(1.0, self.env_steps / max(1, self.anneal_steps))

    def current_lr(self) -> float:
        lr = self.lr * (1.0 - self.progress()) if self.anneal_lr else self.lr
        self.optimizer.lr = lr
        return lr

    def advantages(self, batch: Rollout, lam: float) -> tuple[np.ndarray, np.ndarray]:
        rewards = self.reward_scaler(batch.rewards, batch.dones)
        return gae(rewards, batch.values, batch.next_values, batch.dones.astype(np.float32),
                   self.gamma, lam)

    def gradient_step(self, g_actor_BA: np.ndarray | None, g_log_std_A: np.ndarray | None,
                      g_value_B: np.ndarray) -> None:
        """Backpropagate loss gradients w.r.t. the last `forward`'s outputs, clip, Adam step."""
        rows = len(g_value_B)
        g_out = self._grad_out.get(rows)
        if g_out is None:  # the critic's unused output columns keep a zero gradient
            g_out = self._grad_out[rows] = np.zeros((2, rows, self.head.n_out), np.float32)
        g_out[0] = 0.0 if g_actor_BA is None else g_actor_BA
        g_out[1, :, 0] = g_value_B
        self.kernel.backward(g_out, self._grad_ws, self._grad_bs)
        if self._grad_log_std is not None:
            self._grad_log_std[...] = 0.0 if g_log_std_A is None else g_log_std_A
        if self.max_grad_norm > 0:
            self.optimizer.clip_grad_norm(self.max_grad_norm)
        self.optimizer.step()
        self.count_grad_step()

    def count_grad_step(self) -> None:
        """After an optimizer step: count it, and run on_grad_step where it is set (None, the
        contract's default, unless env.envpool_async's collector set it: rollout_overlap.py)."""
        self.grad_steps += 1
        if self.on_grad_step is not None:
            self.on_grad_step()

    def clone(self, obs: np.ndarray, actions: np.ndarray, steps: int, batch_size: int,
              rng: np.random.Generator) -> float:
        """Behavioural cloning of the policy: `steps` Adam steps on -mean log pi(a|s) over
        minibatches of (obs, actions) (actions as the policy samples them); the last loss.
        grad_steps counts the learner's own steps only; Adam's moments carry over."""
        shape = self.obs_norm.rms.mean.shape
        obs = self.policy_obs(obs.reshape(len(obs), *shape), update=True)  # the data's statistics
        grad_steps = self.grad_steps
        if self.backend == "torch":
            loss = torch_onpolicy.clone(self, obs, actions, steps, min(batch_size, len(obs)), rng)
            self.grad_steps = grad_steps
            return loss
        obs = obs.reshape(len(obs), -1)
        zero_v = np.zeros(min(batch_size, len(obs)), np.float32)
        loss = float("nan")
        for _ in range(steps):
            idx = rng.integers(0, len(obs), len(zero_v))
            out, _ = self.forward(obs[idx])
            logp = self.head.evaluate(out, self.log_std, actions[idx])[0]
            g_actor, g_log_std = self.head.backward(np.full(len(idx), -1.0 / len(idx),
                                                            np.float32), 0.0)
            self.gradient_step(g_actor, g_log_std, zero_v)
            loss = -float(logp.mean())
        self.grad_steps = grad_steps
        return loss

    # ---- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng": self.rng.bit_generator.state, "obs_norm": self.obs_norm.rms.state_dict(),
                "reward_scaler": self.reward_scaler.state_dict(), "env_steps": self.env_steps,
                "grad_steps": self.grad_steps}

    def load_state_dict(self, state: dict) -> None:
        self.weight_loads += 1
        self.net.load_state_dict(state["net"])  # in place: the kernel's views stay valid
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["rng"]
        self.obs_norm.rms.load_state_dict(state["obs_norm"])
        self.reward_scaler.load_state_dict(state["reward_scaler"])
        self.env_steps, self.grad_steps = state["env_steps"], state["grad_steps"]


def box_bounds(space: gym.spaces.Box, who: str, verb: str) -> tuple[np.ndarray, np.ndarray]:
    """(center, half-range) of a bounded Box, flattened, float32: the map to [-1, 1]^A; one
    UserError naming `who` (which `verb` actions into the bounds) where the Box is unbounded."""
    low = np.asarray(space.low, np.float32).reshape(-1)
    high = np.asarray(space.high, np.float32).reshape(-1)
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        raise UserError(f"{who} {verb} actions into the env's bounds, but {space} is unbounded; "
                        "wrap the env with gymnasium.wrappers.RescaleAction or ClipAction")
    return (high + low) / 2, (high - low) / 2


def to_unit_box(actions: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Box actions in the env's units as [B, A] float32 in [-1, 1] (clipped): box_bounds' map."""
    a = (np.asarray(actions, np.float32).reshape(len(actions), -1) - center) / scale
    return np.clip(a, -1.0, 1.0).astype(np.float32, copy=False)


class OffPolicyAlgorithm(OffPolicy):
    """Shared by off-policy algorithms: replay settings, action scaling, random warm-up actions.

    Actions live in a policy space that the replay buffer stores: Box actions in [-1, 1]^A
    (`to_env` rescales them to the env's bounds), Discrete actions as indices.
    """

    def __init__(self, *, observation_space: gym.Space, action_space: gym.Space, n_envs: int,
                 total_steps: int, seed: int = 0, lr: NonNegativeFloat = 3e-4,
                 anneal_lr: bool = False, gamma: Fraction = 0.99, tau: Fraction = 0.005,
                 hidden_sizes: Sizes = (256, 256), buffer_size: PositiveInt = 1_000_000,
                 learning_starts: NonNegativeInt = 100, batch_size: PositiveInt = 256,
                 train_freq: PositiveInt = 1, gradient_steps: PositiveInt = 1):
        if buffer_size < n_envs:
            raise UserError(f"algo.buffer_size={buffer_size} must hold at least one step of the "
                            f"{n_envs} envs (env.n_envs)")
        self.n_envs, self.total_steps, self.seed = n_envs, total_steps, seed
        self.lr, self.anneal_lr, self.gamma, self.tau = lr, anneal_lr, gamma, tau
        self.hidden_sizes = list(hidden_sizes)
        self.buffer_size, self.learning_starts = buffer_size, learning_starts
        self.batch_size, self.train_freq = batch_size, train_freq
        self.gradient_steps = gradient_steps
        self.obs_dim = int(np.prod(observation_space.shape))
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if self.discrete:
            self.n_actions = int(action_space.n)
        else:
            self.action_shape = tuple(action_space.shape)
            self.action_center, self.action_scale = box_bounds(
                action_space, self.name or type(self).__name__, "squashes")
        self.grad_steps = 0

    def matmul_threads(self, cores: int) -> int:
        """trainer.torch_threads=auto for an MLP learner: every core where a minibatch's widest
        hidden-layer matmul reaches THREADS_FROM_MACS multiply-adds, else one. The ThreadTuner
        then times one thread against them now and then (a core taken by another process)."""
        return threads_for_macs(cores, self.hidden_macs())

    def hidden_macs(self) -> int:
        return hidden_macs(self.hidden_sizes, self.batch_size)

    @property
    def n_steps(self) -> int:
        """Env steps per env between updates: the trainer's feeder step."""
        return self.train_freq

    @property
    def buffer_action_dim(self) -> int:
        return 1 if self.discrete else len(self.action_center)

    def random_actions(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """Uniform policy-space actions for the learning_starts warm-up."""
        if self.discrete:
            return rng.integers(0, self.n_actions, n)
        return rng.uniform(-1.0, 1.0, (n, len(self.action_center))).astype(np.float32)

    def to_env(self, actions: np.ndarray) -> np.ndarray:
        """Policy-space actions as the env takes them: [-1, 1] rescaled to [low, high]."""
        if self.discrete:
            return actions
        env_actions = self.action_center + self.action_scale * actions
        return env_actions.reshape(len(actions), *self.action_shape)

    def lr_fraction(self, env_steps: int) -> float:
        """What anneal_lr leaves of an lr at `env_steps`: 1 -> 0 linearly over the budget (RL
        Zoo's lin_<lr>), 1 without it; for lr and an algorithm's own actor_lr alike."""
        if not self.anneal_lr:
            return 1.0
        return max(0.0, 1.0 - env_steps / max(1, self.total_steps))

    def current_lr(self, env_steps: int) -> float:
        return self.lr * self.lr_fraction(env_steps)


def explained_variance(pred: np.ndarray, target: np.ndarray) -> float:
    var = float(np.var(target))
    return float("nan") if var == 0 else 1.0 - float(np.var(target - pred)) / var
