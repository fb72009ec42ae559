"""dqn: its schedules, each option's effect on the target and the loss, the trainer, resume."""
from __future__ import annotations

import math
import signal

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_runner import runstate
from rl_runner.algos.build import build_algo
from rl_runner.algos.dqn import DQN
from rl_runner.algos.qlearn import QLearner
from rl_runner.batches import ReplayBatch
from rl_runner.errors import UserError
from rl_runner.trainer import train
from tests.conftest import FAST, compose, read_scalars
from tests.helpers.frame_env import MODULE_ENV_ID, SMALL_CNN

VEC = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
CARTPOLE = ["env=gym", "env.id=CartPole-v1", "env.n_envs=2"]  # without tuned/dqn_cartpole


def make_dqn(**kw) -> DQN:
    torch.manual_seed(0)
    args = dict(observation_space=VEC, action_space=gym.spaces.Discrete(3), n_envs=1,
                total_steps=1000, seed=0, hidden_sizes=[16])
    return DQN(**{**args, **kw})


def make_q(**kw) -> QLearner:
    torch.manual_seed(0)
    return QLearner(**{**dict(obs_dim=2, n_actions=3, start=0, hidden_sizes=[8], lr=1e-2,
                              gamma=0.9, tau=1.0, seed=0), **kw})


def batch_of(rng: np.random.Generator, B: int = 8, G: int = 1, **fields) -> ReplayBatch:
    """G minibatches of B random transitions of a 2-dim observation and 3 actions."""
    base = ReplayBatch(rng.normal(size=(G, B, 2)).astype(np.float32),
                       rng.integers(0, 3, (G, B, 1)).astype(np.float32),
                       rng.normal(size=(G, B)).astype(np.float32), np.zeros((G, B), np.float32),
                       rng.normal(size=(G, B, 2)).astype(np.float32), 0)
    return base._replace(**fields)


# ---- schedules ----------------------------------------------------------------------------------
def test_epsilon_falls_as_sb3s_linear_schedule_and_counts_every_env_step():
    algo = make_dqn(exploration_fraction=0.4, exploration_initial_eps=1.0,
                    exploration_final_eps=0.1, n_envs=2)
    for steps in (0, 100, 250, 399, 400, 401, 1000):  # SB3's LinearSchedule(1.0, 0.1, 0.4)
        expected = 1.0 + (0.1 - 1.0) * min(1.0, steps / 1000 / 0.4)
        assert algo.epsilon(steps) == pytest.approx(expected, abs=1e-12)
    rng = np.random.default_rng(0)
    algo.random_actions(2, rng)  # the feeder's warm-up steps count too
    algo.explore(np.zeros((2, 4), np.float32))
    assert algo.env_steps == 4
    assert make_dqn(exploration_fraction=0.0).epsilon(0) == 0.05  # no fall: the final value


def test_exploration_takes_random_actions_at_the_rate_epsilon():
    algo = make_dqn(total_steps=10_000, exploration_fraction=1.0, exploration_initial_eps=0.6,
                    exploration_final_eps=0.6)
    obs = np.zeros((20_000, 4), np.float32)
    greedy = algo.learner.greedy(obs)[0]
    actions = algo.explore(obs)
    # random actions are uniform over 3: a third of them equal the greedy one
    assert np.mean(actions != greedy) == pytest.approx(0.6 * 2 / 3, abs=0.01)
    np.testing.assert_array_equal(algo.act(obs[:5], deterministic=True), [greedy] * 5)


def test_prioritized_beta_anneals_to_one_over_the_budget():
    algo = make_dqn(per_beta=0.4)
    assert [algo.per_beta(s) for s in (0, 500, 1000, 2000)] == pytest.approx([0.4, 0.7, 1, 1])


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_the_target_follows_every_target_update_interval_env_steps(tau):
    """n_envs=2, interval 6: SB3 updates every 3 vector steps, at 6, 12, ... env steps; the
    updates due in a feeder step come before its gradient steps."""
    algo = make_dqn(n_envs=2, target_update_interval=6, tau=tau, learning_starts=0, lr=1e-2)
    q = algo.learner
    rng = np.random.default_rng(0)

    def step(env_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        online_before = q.opt.flat.clone()
        target_before = q.target.flat.clone()
        algo.update(batch_of(rng, env_steps=env_steps)._replace(
            obs=rng.normal(size=(1, 8, 4)).astype(np.float32),
            next_obs=rng.normal(size=(1, 8, 4)).astype(np.float32)))
        return online_before, target_before

    step(4)  # 0 -> 4: none due
    online, target = step(8)  # 4 -> 8: one due (at 6), with the online net as it was
    assert not torch.equal(online, target)
    assert torch.allclose(q.target.flat, torch.lerp(target, online, tau))
    kept = q.target.flat.clone()
    step(10)  # 8 -> 10: none due
    assert torch.equal(q.target.flat, kept)
    online, target = step(24)  # 10 -> 24: at 12, 18 and 24
    want = target
    for _ in range(3):
        want = torch.lerp(want, online, tau)
    assert torch.allclose(q.target.flat, want)


def test_every_core_for_the_presets_big_mlp_and_one_for_small_ones_and_cnns():
    """DQN.preferred_threads: the cartpole preset (256x256, batch 64) updates faster on two
    threads; a 64x64 net at batch 32 and a CNN take one."""
    assert make_dqn(hidden_sizes=[256, 256], batch_size=64).preferred_threads(2) == 2
    assert make_dqn(hidden_sizes=[64, 64], batch_size=32).preferred_threads(2) == 1
    frames = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    assert make_dqn(observation_space=frames, hidden_sizes=[256, 256], batch_size=64,
                    cnn_features=32).preferred_threads(2) == 1


def test_backend_picks_the_numpy_kernel_on_the_cpu_and_refuses_it_for_a_cnn():
    """algo.backend: auto steps the MLP through the numpy kernel on the CPU, torch keeps the
    hand-written torch step, and numpy with a CNN is one line naming what is allowed. The two
    steps' arithmetic is checked against autograd in test_qlearn_grad.py."""
    assert make_dqn().learner.kernel is not None
    torch_step = make_dqn(backend="torch")
    assert torch_step.backend == "torch" and torch_step.learner.kernel is None
    assert torch_step.learner.manual
    frames = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    assert make_dqn(observation_space=frames, cnn_features=32).learner.kernel is None
    with pytest.raises(UserError) as err:
        make_dqn(observation_space=frames, cnn_features=32, backend="numpy")
    assert "allowed here: auto, torch" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("dueling", [False, True])
def test_greedy_actions_in_numpy_are_the_torch_networks_argmax(dueling):
    """dqn acts through a numpy forward (HostActor) on the weights as they are after updates:
    the same actions as argmax of the torch network's Q (dueling: of V + A - mean A)."""
    algo = make_dqn(hidden_sizes=[32, 32], dueling=dueling, batch_size=16)
    assert algo.learner.host_net is not None
    obs = np.random.default_rng(1).normal(size=(200, 4)).astype(np.float32)
    for seed in range(3):
        with torch.no_grad():
            want = algo.learner.policy_q(obs).argmax(-1).numpy()
        np.testing.assert_array_equal(algo.learner.greedy(obs), want)
        np.testing.assert_array_equal(algo.act(obs, deterministic=True), want)
        rng = np.random.default_rng(seed)
        algo.update(ReplayBatch(rng.normal(size=(4, 16, 4)).astype(np.float32),
                                rng.integers(0, 3, (4, 16, 1)).astype(np.float32),
                                (10 * rng.normal(size=(4, 16))).astype(np.float32),
                                np.zeros((4, 16), np.float32),
                                rng.normal(size=(4, 16, 4)).astype(np.float32), 100))
    assert len(set(want)) > 1


# ---- the learner's options ----------------------------------------------------------------------
def test_double_and_plain_targets_on_a_constructed_case():
    """The online net prefers action 2 everywhere, the target net action 1: plain DQN takes the
    target's value of 1, double DQN its value of 2."""
    next_obs = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, -1.0]])
    rewards, terminated = torch.tensor([1.0, -1.0, 0.5]), torch.tensor([0.0, 1.0, 0.0])
    targets = {}
    for double in (True, False):
        q = make_q(double_q=double)
        with torch.no_grad():  # output biases: the target is a copy of its own (q.target.net)
            q.net.biases[-1][0, 0] += torch.tensor([0.0, 0.0, 5.0])
            q.target.net.biases[-1][0, 0] += torch.tensor([0.0, 5.0, 0.0])
            online, target = q.net(next_obs)[0], q.target.net(next_obs)[0]
        picked = target.gather(1, online.argmax(-1, keepdim=True))[:, 0] if double \
            else target.max(-1).values
        want = rewards + 0.9 * (1 - terminated) * picked
        targets[double] = q.td_target(next_obs, rewards, terminated, None)
        torch.testing.assert_close(targets[double], want)
    assert (online.argmax(-1) == 2).all() and (target.argmax(-1) == 1).all()
    assert (targets[False] - targets[True])[[0, 2]].min() > 3  # 0.9 x the biases' gap, nearly


def test_n_step_rows_bootstrap_with_gamma_to_the_steps_summed():
    q = make_q()
    next_obs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    rewards, terminated = torch.tensor([1.0, 2.0]), torch.zeros(2)
    one = q.td_target(next_obs, rewards, terminated, None)
    n = q.td_target(next_obs, rewards, terminated, torch.tensor([1.0, 3.0]))
    with torch.no_grad():
        best = q.target.net(next_obs)[0].max(-1).values  # double_q: the same net here (tau=1)
    torch.testing.assert_close(n, rewards + torch.tensor([0.9, 0.729]) * best)
    assert n[0] == one[0]


def test_dueling_q_is_value_plus_advantage_less_its_mean():
    q = make_q(dueling=True)
    obs = torch.randn(5, 2)
    with torch.no_grad():
        raw = q.net(obs)[0]
        assert raw.shape == (5, 4)  # three advantages and the value
        got = q.q_values(q.net, obs)[0]
    value, advantage = raw[:, 3:], raw[:, :3]
    torch.testing.assert_close(got, value + advantage - advantage.mean(-1, keepdim=True))
    torch.testing.assert_close(got.mean(-1), value[:, 0])  # the advantages sum to zero
    plain = make_q()
    assert plain.q_values(plain.net, obs).shape == (1, 5, 3)


def test_importance_weights_scale_each_rows_loss_and_td_errors_are_kept():
    rng = np.random.default_rng(0)
    batch = batch_of(rng, B=6)
    q = make_q()
    with torch.no_grad():
        y = q.td_target(*(torch.from_numpy(x[0]) for x in (batch.next_obs, batch.rewards,
                                                           batch.terminated)), None)
        q_sa = q.net(torch.from_numpy(batch.obs[0]))[0].gather(
            1, torch.from_numpy(batch.actions[0]).long())[:, 0]
    err = (y - q_sa).abs().numpy()
    huber = np.where(err < 1, 0.5 * err ** 2, err - 0.5)
    w = np.array([[1.0, 0.5, 0.0, 0.25, 1.0, 0.0]], np.float32)
    metrics = q.update(batch._replace(weights=w, indices=np.arange(6)[None]))
    assert metrics["qf_loss"] == pytest.approx(float((w[0] * huber).mean()), rel=1e-5)
    np.testing.assert_allclose(q.td_errors, err[None], rtol=1e-5)
    q.update(batch)
    assert q.td_errors is None  # kept only for prioritized batches (they carry indices)


def test_max_grad_norm_clips_the_gradient():
    rng = np.random.default_rng(0)
    batch = batch_of(rng)._replace(rewards=np.full((1, 8), 100.0, np.float32))
    norms = {}
    for clip in (0.0, 0.25):
        q = make_q(max_grad_norm=clip)
        q.update(batch)
        norms[clip] = float(q.opt.grad.norm())  # the gradient the step used
    assert norms[0.0] > 0.5 and norms[0.25] == pytest.approx(0.25, rel=1e-4)


def test_gradient_steps_match_sb3s_dqn_train_on_the_same_weights_and_batches():
    """SB3's DQN.train (plain target, Huber, clip 10, Adam) from the same weights on the same
    minibatches (two gradient steps, n-step discounts in the second) ends at our weights."""
    pytest.importorskip("stable_baselines3")  # the bench extra, not the test extra
    from stable_baselines3 import DQN as SB3DQN
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.type_aliases import ReplayBufferSamples

    env = gym.make("CartPole-v1")
    sb3 = SB3DQN("MlpPolicy", env, learning_rate=1e-2, policy_kwargs=dict(net_arch=[16]),
                 device="cpu", seed=0)
    algo = make_dqn(lr=1e-2, action_space=gym.spaces.Discrete(2), hidden_sizes=[16])
    linears = [m for m in sb3.q_net.q_net if isinstance(m, torch.nn.Linear)]
    targets = [m for m in sb3.q_net_target.q_net if isinstance(m, torch.nn.Linear)]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # ours: x @ W + b with W [1, in, out]; theirs: W x + b
        for net, layers in ((algo.learner.net, linears), (algo.learner.target.net, targets)):
            for w, b, lin in zip(net.weights, net.biases, layers):
                if layers is targets:  # a target other than the online net
                    lin.weight.add_(torch.randn(lin.weight.shape, generator=gen))
                w.copy_(lin.weight.T[None])
                b.copy_(lin.bias[None, None])
    rng = np.random.default_rng(0)
    batch = ReplayBatch(rng.normal(size=(2, 32, 4)).astype(np.float32),
                        rng.integers(0, 2, (2, 32, 1)).astype(np.float32),
                        5 * rng.normal(size=(2, 32)).astype(np.float32),
                        (rng.random((2, 32)) < 0.2).astype(np.float32),
                        rng.normal(size=(2, 32, 4)).astype(np.float32), 0,
                        steps=np.stack([np.ones(32), rng.integers(1, 4, 32)]).astype(np.float32))
    samples = iter(ReplayBufferSamples(*(torch.from_numpy(x[g]) for x in (
        batch.obs, batch.actions.astype(np.int64), batch.next_obs, batch.terminated[..., None],
        batch.rewards[..., None])), discounts=torch.from_numpy(0.99 ** batch.steps[g, :, None]))
        for g in range(2))
    sb3.replay_buffer.sample = lambda *args, **kwargs: next(samples)
    sb3.set_logger(configure(None, []))
    sb3.train(gradient_steps=2, batch_size=32)
    algo.update(batch)
    env.close()
    for w, b, lin in zip(algo.learner.net.weights, algo.learner.net.biases, linears):
        torch.testing.assert_close(w[0], lin.weight.T.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b[0, 0], lin.bias.detach(), rtol=1e-5, atol=1e-6)


# ---- through the trainer ------------------------------------------------------------------------
def test_box_actions_are_refused_with_one_line_naming_who_can():
    env = gym.make("Pendulum-v1")
    with pytest.raises(UserError) as err:
        build_algo(compose(["algo=dqn", "env=pendulum"]), env.observation_space,
                   env.action_space)
    env.close()
    assert "dqn cannot handle" in str(err.value) and "sac" in str(err.value)
    assert "\n" not in str(err.value)


def test_dqn_logs_its_metrics_and_takes_every_option(tmp_path):
    args = ["algo=dqn", *CARTPOLE, *FAST, "algo.hidden_sizes=[16]",
            "algo.learning_starts=64", "algo.batch_size=16", "algo.gradient_steps=2",
            "trainer.total_steps=200", "trainer.eval_every=200", "algo.double_q=true",
            "algo.dueling=true", "algo.n_step=3", "algo.prioritized=true"]
    res = train(compose(args), tmp_path / "run")
    assert res["status"] == "completed" and res["grad_steps"] == 2 * ((200 - 64) // 8 + 1)
    tags = set(read_scalars(tmp_path / "run" / "tb"))
    assert {"losses/td_loss", "losses/q_values", "charts/epsilon",
            "charts/learning_rate"} <= tags


def test_dqn_trains_two_updates_on_frames_with_n_step_prioritized_replay(tmp_path):
    cfg = compose(["algo=dqn", "env=gym", f"env.id={MODULE_ENV_ID}", "env.n_envs=2", *SMALL_CNN,
                   "algo.hidden_sizes=[]", "algo.batch_size=8", "algo.learning_starts=20",
                   "algo.buffer_size=100", *FAST, "trainer.total_steps=32",
                   "trainer.eval_every=32", "algo.n_step=3", "algo.prioritized=true",
                   "trainer.torch_threads=1"])
    res = train(cfg, tmp_path / "run")
    assert res["status"] == "completed" and res["grad_steps"] == 2
    assert math.isfinite(res["eval_return_mean"])


def run_interrupted(cfg, run_dir, monkeypatch) -> None:
    """Train until the first checkpoint, then stop as SIGINT stops (last.pt saved)."""
    save = runstate.save

    def save_then_stop(t, name, wall):
        save(t, name, wall)
        if name == "last.pt" and t.stop_signal is None:
            t.stop_signal = signal.SIGINT

    with monkeypatch.context() as m:
        m.setattr(runstate, "save", save_then_stop)
        assert train(cfg, run_dir)["status"] == "interrupted"


def test_resume_with_the_replay_buffer_is_exact(tmp_path, monkeypatch):
    """Every option on, the target by Polyak: the resumed run ends with the uninterrupted
    run's networks, optimizer, priorities and numbers."""
    cfg = compose(["algo=dqn", *CARTPOLE, *FAST, "algo.hidden_sizes=[16]",
                   "algo.learning_starts=100", "algo.batch_size=16", "algo.train_freq=2",
                   "algo.gradient_steps=2", "algo.target_update_interval=20", "algo.tau=0.5",
                   "algo.double_q=true", "algo.dueling=true", "algo.n_step=3",
                   "algo.prioritized=true", "algo.buffer_size=300",
                   "trainer.total_steps=600", "trainer.checkpoint_every=200",
                   "trainer.eval_every=300", "trainer.save_replay_buffer=true",
                   "trainer.torch_threads=1"])
    a = train(cfg, tmp_path / "A")
    run_interrupted(cfg, tmp_path / "B", monkeypatch)
    b = train(cfg, tmp_path / "B", resume=True)
    for key in ("env_steps", "grad_steps", "eval_return_mean", "best_eval_return_mean"):
        assert a[key] == b[key], key
    last = [torch.load(tmp_path / run / "checkpoints" / "last.pt", weights_only=True)
            for run in ("A", "B")]
    for key in ("algo", "replay_buffer", "feeder"):
        assert_same(last[0][key], last[1][key], key)


def assert_same(a, b, where: str) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.slow
def test_dqn_solves_cartpole_with_the_preset_on_seeds_0_to_2(tmp_path):
    """The issue's bar: the cartpole preset (tuned/dqn_cartpole.yaml: the RL Zoo's values with
    lr 1e-3 annealed), 50k env steps, a final mean return >= 475 over seeds 0-2."""
    finals = []
    for seed in range(3):
        res = train(compose(["algo=dqn", "env=cartpole", f"seed={seed}",
                             "trainer.progress=false"]), tmp_path / f"s{seed}")
        finals.append(res["eval_return_mean"])
    assert np.mean(finals) >= 475, finals


def test_dqns_q_network_starts_from_nn_linears_init_and_cqls_stays_orthogonal():
    """dqn as SB3's and CleanRL's Q-networks: weights and biases uniform in +-1/sqrt(fan_in)
    (the orthogonal sqrt(2) init made the cartpole preset's policy swing more); the learner's
    default, cql's, stays orthogonal with zero biases."""
    torch.manual_seed(0)
    algo = make_dqn(hidden_sizes=[64, 64])
    for w, b in algo.learner.net._layers:
        bound = 1.0 / math.sqrt(w.shape[1])
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
        assert b.abs().max() <= bound and b.abs().max() > 0
    orthogonal = make_q(hidden_sizes=[64, 64])
    w, b = orthogonal.net._layers[0]
    assert torch.allclose(w[0] @ w[0].T, 2.0 * torch.eye(w.shape[1]), atol=1e-4)  # gain sqrt(2)
    assert not b.any()
