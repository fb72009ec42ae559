"""Q-learning on a Q-network for Discrete actions: the one learner of dqn and of cql's Discrete
variant.

Q(s, .) is an MLP (over a Nature CNN's features for image observations, the `encoder`; batches
of images stay uint8 until the CNN), trained on the Huber loss of its TD error against a target
network's value of the next observation:
- the target takes max_a Q-target(s', a) (DQN, Mnih et al. 2015), or with `double_q` the target
  network's value of the online network's argmax (double DQN, van Hasselt et al. 2016);
- with `dueling`, the network has a value head and an advantage head, Q = V + A - mean_a A
  (Wang et al. 2016);
- a batch of n-step returns (batch.steps) bootstraps with gamma ** steps; prioritized replay's
  importance-sampling weights (batch.weights) scale each row's loss, and the absolute TD errors
  are kept for its new priorities (`td_errors`);
- the target network follows the online one by Polyak averaging after every gradient step
  (`target_every_step`, cql), or when its owner calls `update_target` (dqn: every
  target_update_interval env steps).
A learner built on it (cql) adds a term to the loss through `critic_penalty`. Not deterministic,
`act` samples softmax(Q) (cql's evaluation; dqn acts epsilon-greedily on `greedy`).

Two ways to the same gradient step: autograd (the reference; any loss, any encoder, the one
cql takes), and with `manual_backward` (dqn) the Huber loss's gradient backpropagated by hand
through the MLP (mlp_grad.mlp_backward) into the optimizer's flat gradient, without a graph:
an MLP Q-network only (no encoder, no critic_penalty). With `numpy_kernel` as well (dqn's
backend=numpy, its default on the CPU) that hand-written step runs through the numpy MLPKernel
(kernels.py) instead of torch ops: the same arithmetic with less per-call cost.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rl_runner.algos.image_nets import EncodedMLP, obs_tensor, to_cpu
from rl_runner.algos.mlp_grad import FlushDenormals, mlp_backward
from rl_runner.algos.sac_math import HostActor
from rl_runner.algos.twin_critic import PolyakTarget, cached_layers, mlp_forward
from rl_runner.batches import ReplayBatch
from rl_runner.kernels import MLPKernel
from rl_runner.nets import ParallelMLP
from rl_runner.optim import FlatAdam


# Rows per forward of the target network over a whole update's minibatches on the CPU: a
# chunk's activations stay in the core's cache. dqn cartpole's 128 x 64 rows through [256, 256]:
# alone 7.5 ms in chunks of 1024 against 14.0 ms in one forward, the same bits; within its
# updates 10.3 against 12.6 ms (AMD EPYC Zen 4, two threads, medians alternated in one process).
# Other shapes may come out different in the last bits (BLAS blocks rows differently). A GPU
# takes all rows at once.
TARGET_ROWS = 1024


class QLearner:
    """A Q-network, its target copy and its Adam, stepped on replay batches."""

    def __init__(self, *, obs_dim: int, n_actions: int, start: int, hidden_sizes: list[int],
                 lr: float, gamma: float, tau: float, seed: int, activation: str = "relu",
                 encoder: nn.Module | None = None, device: torch.device = torch.device("cpu"),
                 double_q: bool = True, dueling: bool = False, max_grad_norm: float = 0.0,
                 target_every_step: bool = True, manual_backward: bool = False,
                 numpy_kernel: bool = False, init: str = "orthogonal"):
        self.start, self.gamma, self.tau = start, gamma, tau
        self.double_q, self.dueling, self.max_grad_norm = double_q, dueling, max_grad_norm
        self.target_every_step = target_every_step
        self.image, self.device = encoder is not None, torch.device(device)
        in_dim = encoder.out_dim if encoder is not None else obs_dim
        # dueling: one more output column, the value head's
        net = ParallelMLP(in_dim, list(hidden_sizes), n_actions + dueling, k=1,
                          activation=activation, out_gains=(1.0,), init=init)
        self.net = (net if encoder is None else EncodedMLP(encoder, net)).to(self.device)
        self.opt = FlatAdam(self.net.parameters(), lr=lr)
        self.target = PolyakTarget(self.net, self.opt, tau)
        self.gen = torch.Generator().manual_seed(seed)
        self.grad_steps = 0
        # the hand-written gradient: an MLP's only (a CNN stays with autograd), and the loss
        # it differentiates is the Huber TD loss alone (a learner with a penalty keeps autograd)
        self.manual = manual_backward and encoder is None
        if self.manual and type(self).critic_penalty is not QLearner.critic_penalty:
            raise ValueError("manual_backward differentiates the TD loss alone: a learner "
                             "with a critic_penalty takes autograd (manual_backward=False)")
        if self.manual:
            self.layers, self.target_layers = cached_layers(net), cached_layers(self.target.net)
            self.grads = [(w.grad, b.grad) for w, b in self.layers]
            self.relu, self.act, self.n_out = activation == "relu", net.act, n_actions + dueling
        # the hand-written step in numpy: the MLP on the CPU only (its parameters' memory)
        self.kernel = MLPKernel(net) \
            if numpy_kernel and self.manual and self.device.type == "cpu" else None
        if self.kernel is not None:
            self.kernel_work: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            self.kernel_grads = ([w.grad.numpy() for w in net.weights],
                                 [b.grad.numpy() for b in net.biases])
        # greedy actions of the MLP on the CPU in numpy, as sac acts (sac_math.HostActor)
        self.host_net = HostActor(self.layers, self.relu, None) \
            if self.manual and self.device.type == "cpu" else None
        self.td_errors: np.ndarray | None = None  # |TD error| [G, B] of the last prioritized batch

    def preferred_threads(self, cores: int) -> int:
        return 1  # CNN or not: Algorithm.preferred_threads says why

    def critic_penalty(self, obs_BD: torch.Tensor, next_obs_BD: torch.Tensor,
                       q_KB: torch.Tensor, q_KBA: torch.Tensor
                       ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """A term added to the TD loss, and metrics about it (their mean over the update's
        minibatches is returned by `update`), from Q(s, a) [1, B] of the batch's actions and
        Q(s, .) [1, B, |A|]; Q-learning itself adds none."""
        return None, {}

    def q_values(self, net, obs: torch.Tensor) -> torch.Tensor:
        """Q(s, .) [1, B, |A|] of `net` (the online or the target network, or a forward of
        either's cached layers)."""
        return self.head(net(obs))

    def head(self, out: torch.Tensor) -> torch.Tensor:
        """Q from the network's outputs: as they are, or dueling's V + A - mean_a A."""
        if not self.dueling:
            return out
        advantage, value = out[..., :-1], out[..., -1:]
        return value + advantage - advantage.mean(-1, keepdim=True)

    @torch.no_grad()
    def policy_q(self, obs: np.ndarray) -> torch.Tensor:
        """Q(s, .) [B, |A|] of the network the policy reads: the online one here."""
        return self.q_values(self.net, obs_tensor(obs, self.image, self.device))[0]

    def greedy(self, obs: np.ndarray) -> np.ndarray:
        """argmax_a Q(s, a), as indices from 0."""
        if self.host_net is None:
            return self.policy_q(obs).argmax(-1).cpu().numpy()
        out_BO = self.host_net.out(obs)
        # dueling's V and mean_a A are the same for every action of a row: argmax_a A
        return out_BO[:, :self.n_out - self.dueling].argmax(-1)

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = False) -> np.ndarray:
        if deterministic:
            return self.greedy(obs) + self.start
        # on the CPU from here: the sampling generator is the CPU's, and so are the actions
        q_BA = self.policy_q(obs).cpu()
        u = torch.rand(q_BA.shape, generator=self.gen).clamp_(min=1e-20)
        return torch.argmax(q_BA - torch.log(-torch.log(u)), dim=-1).numpy() + self.start

    @torch.no_grad()
    def td_target(self, next_obs: torch.Tensor, rewards_B: torch.Tensor,
                  terminated_B: torch.Tensor, steps_B: torch.Tensor | None) -> torch.Tensor:
        """r + gamma^steps (1 - terminated) Q-target(s', a'), a' the greedy action of the
        target network, or with double_q of the online one."""
        return self.bootstrap(self.target.net, self.net, next_obs, rewards_B,
                              self.discount(terminated_B, steps_B))

    def discount(self, terminated: torch.Tensor, steps: torch.Tensor | None) -> torch.Tensor:
        """gamma^steps (1 - terminated): the factor on Q-target(s', a') of each row (steps:
        n-step returns' lengths; None: one step)."""
        return (self.gamma if steps is None else self.gamma ** steps) * (1.0 - terminated)

    def bootstrap(self, target, online, next_obs: torch.Tensor, rewards_B: torch.Tensor,
                  discount_B: torch.Tensor, q_next_BA: torch.Tensor | None = None) -> torch.Tensor:
        """r + discount Q-target(s', a') from the forwards `target` and `online` (obs to the
        network's outputs), or from Q-target(s', .) given as `q_next_BA`; call without
        autograd."""
        if q_next_BA is None:
            q_next_BA = self.q_values(target, next_obs)[0]
        if self.double_q:
            best_B1 = self.q_values(online, next_obs)[0].argmax(-1, keepdim=True)
            q_next_B = q_next_BA.gather(1, best_B1)[:, 0]
        else:
            q_next_B = q_next_BA.max(-1).values
        return rewards_B + discount_B * q_next_B

    def update(self, batch: ReplayBatch) -> dict[str, float]:
        """One gradient step per minibatch of batch (actions as float indices from 0;
        observations [G, B, D] float32, or [G, B, *image] uint8 with an encoder). The batch
        becomes tensors once, and each step's Q(s, a) and TD error stay in [G, B] tensors that
        are read back once, at the end (no .item() per step: each is a host sync on a GPU)."""
        dev = self.device
        G, B = batch.rewards.shape

        def tensor(x: np.ndarray | None) -> torch.Tensor | None:
            return None if x is None else torch.from_numpy(x).to(dev, non_blocking=True)

        obs, next_obs, rewards, weights = (tensor(x) for x in (
            batch.obs, batch.next_obs, batch.rewards, batch.weights))
        actions = tensor(batch.actions).reshape(G, B, 1).long()
        discount = self.discount(tensor(batch.terminated), tensor(batch.steps))
        q_GB = torch.empty(G, B, device=dev)  # Q(s, a) of each step's online network
        err_GB = torch.empty(G, B, device=dev)  # Q(s, a) - y
        target = self.targets(next_obs, rewards, discount, numpy=self.kernel is not None)
        if self.manual:
            pick_GBO = self.picker(actions)
            scaled_GBO = pick_GBO * (1.0 / B if weights is None else weights[..., None] / B)
            step, arrays = self.manual_step, (obs, q_GB, err_GB, pick_GBO, scaled_GBO)
            if self.kernel is not None:  # numpy views made once (kernel_step says why)
                step, arrays = self.kernel_step, tuple(x.numpy() for x in arrays)
            obs_G, q_G, err_G, pick_G, scaled_G = arrays
            with torch.no_grad(), FlushDenormals():
                for g in range(G):
                    step(obs_G[g], target(g), q_G[g], err_G[g], pick_G[g], scaled_G[g])
            extras = []
        else:
            extras = [self.autograd_step(obs[g], next_obs[g], actions[g], target(g), q_GB[g],
                                         err_GB[g], None if weights is None else weights[g])
                      for g in range(G)]
        with torch.no_grad():
            huber_GB = F.smooth_l1_loss(err_GB, torch.zeros_like(err_GB), reduction="none")
            loss = huber_GB.mean() if weights is None else (weights * huber_GB).mean()
            loss, q = torch.stack([loss, q_GB.mean()]).tolist()
            self.td_errors = None if batch.indices is None else err_GB.abs().cpu().numpy()
        metrics = {"qf_loss": loss, "qf_values": q}
        for key in extras[0] if extras else ():
            metrics[key] = sum(e[key] for e in extras) / len(extras)
        return metrics

    @torch.no_grad()
    def targets(self, next_obs: torch.Tensor, rewards: torch.Tensor, discount: torch.Tensor,
                numpy: bool = False) -> Callable[[int], torch.Tensor | np.ndarray]:
        """g -> the TD target y [B] of minibatch g of an update ([G, B, ...] tensors; `numpy`:
        as a numpy array, for the CPU's numpy kernel), called just before step g. Where the
        target network stands still through the update (dqn: not target_every_step) its
        Q(s', .) for all G minibatches come from forwards of TARGET_ROWS rows, as does y
        without double_q (whose argmax reads each step's online network)."""
        target, online = ((self.target_forward, self.online_forward) if self.manual
                          else (self.target.net, self.net))
        q_next_GBA = None
        if not self.target_every_step:  # else the target moves after every step
            G, B = rewards.shape
            rows = TARGET_ROWS if self.device.type == "cpu" else G * B
            q_next_GBA = torch.cat([self.q_values(target, chunk)[0] for chunk in
                                    next_obs.flatten(0, 1).split(rows)]).unflatten(0, (G, B))
            if not self.double_q:
                y_GB = rewards + discount * q_next_GBA.max(-1).values
                return (y_GB.numpy() if numpy else y_GB).__getitem__

        @torch.no_grad()
        def step_target(g: int) -> torch.Tensor | np.ndarray:
            y_B = self.bootstrap(target, online, next_obs[g], rewards[g], discount[g],
                                 None if q_next_GBA is None else q_next_GBA[g])
            return y_B.numpy() if numpy else y_B
        return step_target

    def autograd_step(self, obs, next_obs, actions_B1, y_B, q_B, err_B,
                      weights_B) -> dict[str, float]:
        """One step through autograd (the reference, and the path of encoders and of learners
        with a critic_penalty) towards the TD target y_B; writes Q(s, a) and the TD error into
        q_B and err_B and returns the penalty's metrics."""
        q_KBA = self.q_values(self.net, obs)
        q_KB = q_KBA.gather(2, actions_B1[None])[..., 0]
        if weights_B is None:
            loss = F.smooth_l1_loss(q_KB[0], y_B)
        else:  # importance-sampling weights of prioritized replay
            loss = (weights_B * F.smooth_l1_loss(q_KB[0], y_B, reduction="none")).mean()
        penalty, extra = self.critic_penalty(obs, next_obs, q_KB, q_KBA)
        self.opt.zero_grad()
        (loss if penalty is None else loss + penalty).backward()
        with torch.no_grad():
            q_B.copy_(q_KB[0])
            torch.sub(q_B, y_B, out=err_B)
        self.optimizer_step()
        return extra

    def picker(self, actions_GB1: torch.Tensor) -> torch.Tensor:
        """P [G, B, out] with Q(s, a) = sum_o out_o P_o for the network's outputs out: a one-hot
        of a, or with dueling (out = A, V) the one-hot less 1/|A| and a 1 for V. It is also
        dQ(s, a)/d out, the gradient the TD loss sends into the network."""
        G, B, _ = actions_GB1.shape
        n = self.n_out - self.dueling  # actions
        pick = torch.zeros(G, B, self.n_out, device=actions_GB1.device)
        pick.scatter_(2, actions_GB1, 1.0)
        if self.dueling:
            pick[..., :n] -= 1.0 / n
            pick[..., n] = 1.0
        return pick

    def manual_step(self, obs, y_B, q_B, err_B, pick_BO, scaled_BO) -> None:
        """One step towards the TD target y_B with the gradient by hand: the Huber loss's
        dL/dQ(s, a) is clamp(Q(s, a) - y, -1, 1) / B (times the row's weight), through `pick`
        into the outputs, then mlp_backward into the flat gradient. The actions are in `pick`
        (picker) and `scaled` (pick x weight / B). Call without autograd."""
        hidden: list[torch.Tensor] = []
        out_1BO = mlp_forward(self.layers, self.act, obs, hidden)
        torch.sum(out_1BO[0] * pick_BO, -1, out=q_B)
        torch.sub(q_B, y_B, out=err_B)
        g_1BO = (scaled_BO * err_B.clamp(-1.0, 1.0)[:, None])[None]
        mlp_backward(self.layers, self.relu, obs, hidden, g_1BO, grads=self.grads)
        self.optimizer_step()

    def kernel_step(self, obs, y_B, q_B, err_B, pick_BO, scaled_BO) -> None:
        """manual_step's arithmetic through the numpy MLPKernel, on numpy arrays (views of the
        update's tensors): dqn cartpole's update (128 steps of 64 rows, 256x256) took 5-8% less
        time than with torch ops (AMD EPYC Zen 4, two threads, alternated in one process). The
        arrays come in as numpy (an index of a tensor and its .numpy() took ~1.5 us each, one
        ufunc ~0.7, np.clip ~3.8 on 64 rows, same host)."""
        out_BO = self.kernel.forward(obs)[0]
        np.einsum("bo,bo->b", out_BO, pick_BO, out=q_B)
        np.subtract(q_B, y_B, out=err_B)
        clipped_B1, g_BO = self._kernel_work(len(err_B), pick_BO.shape[1])
        np.minimum(err_B[:, None], 1.0, out=clipped_B1)  # the clamp in two ufuncs
        np.maximum(clipped_B1, -1.0, out=clipped_B1)
        np.multiply(scaled_BO, clipped_B1, out=g_BO)
        self.kernel.backward(g_BO[None], *self.kernel_grads)
        self.optimizer_step()

    def _kernel_work(self, rows: int, outputs: int) -> tuple[np.ndarray, np.ndarray]:
        """kernel_step's work arrays for this many rows, made once."""
        work = self.kernel_work.get(rows)
        if work is None:
            work = self.kernel_work[rows] = (np.empty((rows, 1), np.float32),
                                             np.empty((rows, outputs), np.float32))
        return work

    def online_forward(self, obs: torch.Tensor) -> torch.Tensor:
        return mlp_forward(self.layers, self.act, obs)

    def target_forward(self, obs: torch.Tensor) -> torch.Tensor:
        return mlp_forward(self.target_layers, self.act, obs)

    def optimizer_step(self) -> None:
        """Clip, Adam, and the target's Polyak step where it follows every step."""
        if self.max_grad_norm > 0:
            self.opt.clip_grad_norm(self.max_grad_norm)
        self.opt.step()
        if self.target_every_step:
            self.target.update()
        self.grad_steps += 1

    def update_target(self, times: int = 1) -> None:
        """`times` target updates: a copy of the online network (tau = 1), or as many Polyak
        steps towards it."""
        if self.tau >= 1.0:
            if times > 0:
                with torch.no_grad():
                    self.target.flat.copy_(self.opt.flat)
            return
        for _ in range(times):
            self.target.update()

    def state_dict(self) -> dict:
        """CPU tensors, wherever the networks are (a GPU run's checkpoint loads on a CPU)."""
        return to_cpu({"net": self.net.state_dict(), "target": self.target.flat.clone(),
                       "opt": self.opt.state_dict(), "gen": self.gen.get_state(),
                       "grad_steps": self.grad_steps})

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])  # in place: the net stays a view of opt's buffer
        with torch.no_grad():
            self.target.flat.copy_(state["target"])
        self.opt.load_state_dict(state["opt"])
        self.gen.set_state(state["gen"])
        self.grad_steps = state["grad_steps"]
