"""SAC: the squashed-Gaussian density, the update against a torch reference, acting in bounds,
state round trip, the discrete variant, runs through the trainer; learning checks (slow)."""
from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_runner.algos.sac import SAC, squashed_gaussian
from rl_runner.errors import UserError
from rl_runner.trainer import train
from tests.algos.helpers import (CARTPOLE_OBS, PENDULUM_ACT, PENDULUM_OBS,
                                 random_replay_batch)
from tests.conftest import FAST, compose, read_results, read_scalars

SAC_TAGS = {"losses/qf_loss", "losses/actor_loss", "losses/alpha", "losses/alpha_loss",
            "losses/qf_values", "losses/entropy", "charts/learning_rate"}


def make_sac(action_space: gym.Space, obs_space: gym.Space = PENDULUM_OBS, **kw) -> SAC:
    torch.manual_seed(kw.get("seed", 0))  # network initialisation, as the trainer seeds it
    args = dict(observation_space=obs_space, action_space=action_space, n_envs=1,
                total_steps=10_000, seed=0, hidden_sizes=[32, 32], batch_size=64)
    return SAC(**{**args, **kw})


random_batch = random_replay_batch


# ---- the squashed Gaussian ----------------------------------------------------------------------
def test_log_prob_matches_the_numerical_density_of_tanh_u():
    """d/da P(tanh(u) <= a) = d/da Phi((atanh(a) - mean) / std), by central differences."""
    mean, std = 0.7, 1.3
    a = np.linspace(-0.995, 0.995, 401)
    h = 1e-6
    def cdf(x: np.ndarray) -> torch.Tensor:  # the standard normal CDF, in float64
        return torch.special.ndtr(torch.tensor((np.arctanh(x) - mean) / std, dtype=torch.float64))

    numeric = ((cdf(a + h) - cdf(a - h)) / (2 * h)).numpy()
    noise = torch.tensor((np.arctanh(a) - mean) / std, dtype=torch.float64)[:, None]
    action, logp = squashed_gaussian(torch.full_like(noise, mean),
                                     torch.full_like(noise, math.log(std)), noise)
    np.testing.assert_allclose(action[:, 0].numpy(), a, atol=1e-12)
    np.testing.assert_allclose(np.exp(logp.numpy()), numeric, rtol=1e-5)


@pytest.mark.parametrize("mean,log_std", [(-0.3, 0.2), (1.5, -0.5), (0.5, 0.5)])
def test_log_prob_integrates_to_the_histogram_of_samples(mean, log_std):
    """Bin frequencies of 400k samples of tanh(u) against the density integrated per bin."""
    n, bins, sub = 400_000, 40, 200
    gen = torch.Generator().manual_seed(0)
    actions, _ = squashed_gaussian(torch.full((n, 1), mean), torch.full((n, 1), log_std),
                                   torch.randn((n, 1), generator=gen))
    freq = np.histogram(actions.numpy(), bins=bins, range=(-1, 1))[0] / n
    # midpoint rule on `sub` points per bin, in float64 (the density is steep near +-1)
    width = 2.0 / (bins * sub)
    a = torch.linspace(-1 + width / 2, 1 - width / 2, bins * sub, dtype=torch.float64)[:, None]
    m, s = torch.full_like(a, mean), torch.full_like(a, log_std)
    _, logp = squashed_gaussian(m, s, (torch.atanh(a) - m) / s.exp())
    prob = (logp.exp() * width).reshape(bins, sub).sum(1).numpy()
    assert prob.sum() == pytest.approx(1.0, abs=2e-3)
    sigma = np.sqrt(prob * (1 - prob) / n)
    assert np.all(np.abs(freq - prob) < 5 * sigma + 1e-4), np.abs(freq - prob) / sigma


def test_log_probs_of_independent_dimensions_add_up():
    mean, log_std = torch.tensor([[-0.3, 1.5]]), torch.tensor([[0.2, -0.5]])
    noise = torch.randn((5, 2), generator=torch.Generator().manual_seed(1))
    _, logp0 = squashed_gaussian(mean[:, :1], log_std[:, :1], noise[:, :1])
    _, logp1 = squashed_gaussian(mean[:, 1:], log_std[:, 1:], noise[:, 1:])
    _, joint = squashed_gaussian(mean, log_std, noise)
    torch.testing.assert_close(joint, logp0 + logp1)


def test_log_prob_stays_exact_where_tanh_saturates():
    """|u| = 15: 1 - tanh(u)^2 underflows in float32, but log(1 - tanh(u)^2) = log 4 - 2|u|
    up to O(exp(-2|u|)), which the softplus form keeps."""
    u = torch.tensor([[15.0], [-15.0]])
    _, logp = squashed_gaussian(u, torch.zeros_like(u), torch.zeros_like(u))
    expected = -0.5 * math.log(2 * math.pi) - (math.log(4.0) - 30.0)
    torch.testing.assert_close(logp, torch.full((2,), expected))


# ---- the update ---------------------------------------------------------------------------------
def reference_step(algo: SAC, batch, box: bool) -> dict[str, torch.Tensor]:
    """One SAC gradient step written plainly: separate torch.optim.Adam per part, full backward,
    Polyak over parameter lists; the same noise stream and the same order of steps as `update`."""
    actor, critic, target = (copy.deepcopy(m) for m in networks(algo).values())
    log_alpha = algo.log_alpha.detach().clone().requires_grad_(True)
    opts = [torch.optim.Adam(p, lr=lr) for p, lr in (
        (actor.parameters(), algo.lr if algo.actor_lr is None else algo.actor_lr),
        (critic.parameters(), algo.lr), ([log_alpha], algo.lr))]
    gen = torch.Generator()
    gen.set_state(algo.gen.get_state())
    obs, act, nobs = (torch.from_numpy(np.ascontiguousarray(x[0]))
                      for x in (batch.obs, batch.actions, batch.next_obs))
    rew, term = torch.from_numpy(batch.rewards[0]), torch.from_numpy(batch.terminated[0])
    alpha = log_alpha.exp().detach()

    def policy(o):
        out = actor(o)[0]
        if not box:
            return torch.log_softmax(out, -1)
        a = out.shape[1] // 2
        return squashed_gaussian(out[:, :a], out[:, a:].clamp(-20, 2),
                                 torch.randn((len(o), a), generator=gen))

    def step(opt, loss):
        opt.zero_grad()
        loss.backward()
        opt.step()

    if box:
        a_pi, logp_pi = policy(obs)
        step(opts[2], -(log_alpha * (logp_pi + algo.target_entropy).detach()).mean())
        with torch.no_grad():
            a_next, logp_next = policy(nobs)
            q_next = target(torch.cat([nobs, a_next], -1))[..., 0].min(0).values
            soft = q_next - alpha * logp_next if algo.backup_entropy else q_next
            y = rew + algo.gamma * (1 - term) * soft
        q = critic(torch.cat([obs, act], -1))[..., 0]
        step(opts[1], 0.5 * sum(torch.nn.functional.mse_loss(qj, y) for qj in q))
        q_pi = critic(torch.cat([obs, a_pi], -1))[..., 0].min(0).values
        step(opts[0], (alpha * logp_pi - q_pi).mean())
    else:
        logp = policy(obs)
        neg_entropy = (logp.exp() * logp).sum(-1)
        step(opts[2], -(log_alpha * (neg_entropy + algo.target_entropy).detach()).mean())
        with torch.no_grad():
            logp_next = policy(nobs)
            q_next = target(nobs).min(0).values
            soft = q_next - alpha * logp_next if algo.backup_entropy else q_next
            v = (logp_next.exp() * soft).sum(-1)
            y = rew + algo.gamma * (1 - term) * v
        q_all = critic(obs)
        rows, taken = torch.arange(len(act)), act[:, 0].long()
        q = torch.stack([qj[rows, taken] for qj in q_all])
        step(opts[1], 0.5 * sum(torch.nn.functional.mse_loss(qj, y) for qj in q))
        step(opts[0], (logp.exp() * (alpha * logp - q_all.detach().min(0).values)).sum(-1).mean())
    with torch.no_grad():
        for pt, p in zip(target.parameters(), critic.parameters()):
            pt.mul_(1 - algo.tau).add_(algo.tau * p)
    return {"actor": actor.state_dict(), "critic": critic.state_dict(),
            "critic_target": target.state_dict(), "log_alpha": log_alpha.detach()}


def networks(algo: SAC) -> dict[str, torch.nn.Module]:
    return {"actor": algo.actor, "critic": algo.critics.net,
            "critic_target": algo.critics.target.net}


@pytest.mark.parametrize("kind", ["box", "discrete"])
@pytest.mark.parametrize("settings", [{}, {"actor_lr": 1e-2, "backup_entropy": False}],
                         ids=["defaults", "actor_lr-no_backup_entropy"])
def test_update_matches_a_plain_torch_reference(kind, settings):
    box = kind == "box"
    algo = (make_sac(gym.spaces.Box(-2, 2, (2,), np.float32), lr=3e-3, **settings) if box else
            make_sac(gym.spaces.Discrete(3), CARTPOLE_OBS, lr=3e-3, **settings))
    batch = random_batch(algo)
    expected = reference_step(algo, batch, box)
    metrics = algo.update(batch)
    assert algo.grad_steps == 1
    for name, net in networks(algo).items():
        for key, value in net.state_dict().items():
            torch.testing.assert_close(value, expected[name][key], rtol=1e-4, atol=1e-6,
                                       msg=lambda m: f"{name}.{key}: {m}")
    torch.testing.assert_close(algo.log_alpha.detach(), expected["log_alpha"])
    assert set(metrics) == {"qf_loss", "actor_loss", "alpha", "alpha_loss", "entropy",
                            "qf_values", "learning_rate"}
    assert all(math.isfinite(v) and isinstance(v, float) for v in metrics.values())


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_min_q_action_grad_matches_autograd_through_both_critics(activation):
    algo = make_sac(gym.spaces.Box(-2, 2, (2,), np.float32), activation=activation,
                    hidden_sizes=[32, 24, 16])
    gen = torch.Generator().manual_seed(1)
    obs, actions = torch.randn(64, 3, generator=gen), torch.rand(64, 2, generator=gen) * 2 - 1
    a = actions.clone().requires_grad_(True)
    q_KB = algo.critics.net(torch.cat([obs, a], -1))[..., 0]
    q_min = q_KB.min(0)
    q_min.values.sum().backward()
    assert 0 < int(q_min.indices.sum()) < 64  # each critic gives the min on some rows
    got_q, got_grad = algo.min_q_action_grad(obs, actions)
    torch.testing.assert_close(got_q, q_min.values.detach())
    torch.testing.assert_close(got_grad, a.grad)


def test_gradient_steps_take_one_step_per_minibatch_and_average_the_metrics():
    algo = make_sac(PENDULUM_ACT, gradient_steps=3)
    metrics = algo.update(random_batch(algo, n_batches=3))
    assert algo.grad_steps == 3
    assert metrics["alpha"] < 1.0  # three temperature steps from alpha = 1
    assert algo.actor_opt.steps == algo.critics.opt.steps == algo.alpha_opt.steps == 3


class PenalisedSAC(SAC):
    """A learner built on SAC through its hook: weight x mean Q(s, a) joins the critics' loss."""

    def __init__(self, *, weight: float, **kwargs):
        super().__init__(**kwargs)
        self.weight, self.calls = weight, 0

    def critic_penalty(self, obs_BD, next_obs_BD, q_KB, q_KBA):
        self.calls += 1
        assert (q_KBA is None) == (not self.discrete)  # Discrete: Q(s, .) for every action
        return self.weight * q_KB.mean(), {"calls": float(self.calls)}


@pytest.mark.parametrize("space", [PENDULUM_ACT, gym.spaces.Discrete(2)], ids=["box", "discrete"])
def test_critic_penalty_joins_the_critics_loss_and_reports_mean_metrics(space):
    obs_space = PENDULUM_OBS if isinstance(space, gym.spaces.Box) else CARTPOLE_OBS
    q = {}
    for weight in (0.0, 100.0):
        torch.manual_seed(0)
        algo = PenalisedSAC(weight=weight, observation_space=obs_space, action_space=space,
                            n_envs=1, total_steps=1000, hidden_sizes=[32, 32], batch_size=64,
                            gradient_steps=2, lr=1e-2)
        batch = random_batch(algo, n_batches=2)
        assert algo.update(batch)["calls"] == 1.5  # the mean over the two minibatches
        q[weight] = [algo.update(batch)["qf_values"] for _ in range(5)][-1]
    assert q[100.0] < q[0.0] - 1.0, q  # descending 100 x Q pushes Q down
    assert make_sac(space, obs_space).critic_penalty(None, None, None, None) == (None, {})


def test_sample_actions_draws_n_rows_per_state_with_their_log_densities():
    algo = make_sac(gym.spaces.Box(-2, 2, (2,), np.float32))
    obs, state = torch.randn(4, 3, generator=torch.Generator().manual_seed(2)), algo.gen.get_state()
    actions, logp = algo.sample_actions(obs, 3)
    assert actions.requires_grad  # reparameterised: the actor's loss backpropagates through it
    algo.gen.set_state(state)  # the same noise, state by state: rows 3b .. 3b+2 are state b's
    out = algo.actor(obs.repeat_interleave(3, 0))[0]
    expected = squashed_gaussian(out[:, :2], out[:, 2:].clamp(-20, 2),
                                 torch.randn((12, 2), generator=algo.gen))
    torch.testing.assert_close((actions, logp), expected)
    uniform = algo.uniform_actions(10_000)
    assert uniform.shape == (10_000, 2) and uniform.abs().max() <= 1
    assert abs(uniform.mean().item()) < 0.02  # uniform on [-1, 1]


@pytest.mark.parametrize("anneal", [False, True])
def test_actor_lr_is_the_actors_own_and_decays_with_lr(anneal):
    batch = random_batch(make_sac(PENDULUM_ACT))._replace(env_steps=2500)  # 1/4 of the budget
    algo = make_sac(PENDULUM_ACT, lr=1e-3, actor_lr=2e-4, anneal_lr=anneal)
    algo.update(batch)
    fraction = 0.75 if anneal else 1.0
    assert algo.critics.opt.lr == pytest.approx(1e-3 * fraction)
    assert algo.actor_opt.lr == pytest.approx(2e-4 * fraction)
    make_sac(PENDULUM_ACT, lr=0.0, actor_lr=1e-4).update(batch)  # no lr ratio: lr=0 is fine


@pytest.mark.parametrize("space", [PENDULUM_ACT, gym.spaces.Discrete(2)], ids=["box", "discrete"])
def test_temperature_moves_towards_the_target_entropy(space):
    obs = PENDULUM_OBS if isinstance(space, gym.spaces.Box) else CARTPOLE_OBS
    low = make_sac(space, obs, target_entropy=-50.0)  # entropy far above target: alpha falls
    high = make_sac(space, obs, target_entropy=50.0)
    assert low.update(random_batch(low))["alpha"] == 1.0  # metrics report alpha before the step
    assert high.update(random_batch(high))["alpha"] == 1.0
    assert low._alpha().item() < 1.0 < high._alpha().item()


def test_fixed_temperature():
    algo = make_sac(PENDULUM_ACT, ent_coef=0.05)
    metrics = algo.update(random_batch(algo))
    assert metrics["alpha"] == pytest.approx(0.05)
    assert "alpha_loss" not in metrics
    assert algo._alpha().item() == pytest.approx(0.05)


def test_discrete_target_entropy_is_scaled_from_log_actions():
    assert make_sac(gym.spaces.Discrete(4), CARTPOLE_OBS).target_entropy == \
        pytest.approx(0.8 * math.log(4))
    algo = make_sac(gym.spaces.Discrete(4), CARTPOLE_OBS, target_entropy_scale=0.5)
    assert algo.target_entropy == pytest.approx(0.5 * math.log(4))
    assert make_sac(gym.spaces.Box(-1, 1, (3,), np.float32)).target_entropy == -3.0


# ---- acting -------------------------------------------------------------------------------------
def test_box_actions_stay_in_asymmetric_bounds():
    space = gym.spaces.Box(np.array([0.0, -1.0], np.float32), np.array([3.0, 5.0], np.float32))
    algo = make_sac(space)
    obs = np.random.default_rng(0).normal(size=(512, 3)).astype(np.float32)
    with torch.no_grad():
        algo.actor.biases[-1][0, 0, 2:].fill_(2.0)  # log-std at its upper clamp: wide samples
    for deterministic in (False, True):
        actions = algo.act(obs, deterministic=deterministic)
        assert actions.shape == (512, 2)
        assert (actions >= space.low).all() and (actions <= space.high).all()
    with torch.no_grad():
        algo.actor.biases[-1][0, 0, :2] = torch.tensor([50.0, -50.0])  # means far outside
    np.testing.assert_allclose(algo.act(obs, deterministic=True), np.tile([3.0, -1.0], (512, 1)))
    explored = algo.explore(obs)
    assert np.abs(explored).max() <= 1.0  # the buffer keeps the policy space


def test_deterministic_actions():
    algo = make_sac(gym.spaces.Discrete(3), CARTPOLE_OBS)
    obs = np.random.default_rng(1).normal(size=(64, 4)).astype(np.float32)
    with torch.no_grad():
        logits = algo.actor(torch.from_numpy(obs))[0]
    np.testing.assert_array_equal(algo.act(obs, deterministic=True), logits.argmax(-1).numpy())
    sampled = algo.act(obs)
    assert sampled.dtype.kind == "i" and set(sampled.tolist()) <= {0, 1, 2}


def test_bad_settings_fail_with_one_clear_line():
    with pytest.raises(UserError, match="RescaleAction"):
        make_sac(gym.spaces.Box(-np.inf, np.inf, (1,), np.float32))
    with pytest.raises(UserError, match="buffer_size"):
        make_sac(PENDULUM_ACT, n_envs=4, buffer_size=2)
    with pytest.raises(UserError, match="alpha_init"):
        make_sac(PENDULUM_ACT, alpha_init=0.0)
    with pytest.raises(UserError, match="activation"):
        make_sac(PENDULUM_ACT, activation="gelu")


# ---- state --------------------------------------------------------------------------------------
@pytest.mark.parametrize("space", [PENDULUM_ACT, gym.spaces.Discrete(2)], ids=["box", "discrete"])
def test_state_dict_round_trip(space):
    obs_space = PENDULUM_OBS if isinstance(space, gym.spaces.Box) else CARTPOLE_OBS
    a = make_sac(space, obs_space)
    for i in range(3):
        a.update(random_batch(a, seed=i))
    b = make_sac(space, obs_space, seed=7)
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert b.grad_steps == 3
    batch = random_batch(a, seed=10)
    assert a.update(batch) == b.update(batch)  # same noise stream, same optimizer moments
    for name, net in networks(a).items():
        for (k, va), vb in zip(net.state_dict().items(),
                               networks(b)[name].state_dict().values()):
            assert torch.equal(va, vb), f"{name}.{k}"
    obs = np.zeros((4, obs_space.shape[0]), np.float32)
    np.testing.assert_array_equal(a.explore(obs), b.explore(obs))
    # parameters are still views into the optimizers' flat buffers after loading
    assert b.critics.net.weights[0].data_ptr() == b.critics.opt.flat.data_ptr()
    assert b.critics.target.net.weights[0].data_ptr() == b.critics.target.flat.data_ptr()
    # TwinCritic's keys at the top level, as SAC kept its critics before it: old files load
    assert set(a.state_dict()) == {"actor", "critic", "critic_target", "log_alpha", "actor_opt",
                                   "critic_opt", "alpha_opt", "gen", "grad_steps"}


# ---- through the trainer ------------------------------------------------------------------------
def sac_cfg(env: str, *extra: str):
    return compose(["algo=sac", f"env={env}", "env.n_envs=1", "algo.hidden_sizes=[32,32]",
                    "algo.batch_size=32", "algo.learning_starts=64", *FAST,
                    "trainer.total_steps=400", "trainer.eval_every=200", *extra])


def test_pendulum_run_logs_the_sac_curves_and_saves_the_buffer_when_asked(tmp_path):
    res = train(sac_cfg("pendulum", "trainer.save_replay_buffer=true"), tmp_path / "run")
    assert res["status"] == "completed" and res["env_steps"] == 400
    assert res["grad_steps"] == 400 - 64 + 1  # an update per step once 64 are stored
    scalars = read_scalars(tmp_path / "run" / "tb")
    assert SAC_TAGS <= set(scalars), SAC_TAGS - set(scalars)
    # an update per env step from step 64 on; losses and SPS are logged every 100 env steps
    for tag in ("losses/qf_loss", "charts/SPS"):
        assert [step for step, _ in scalars[tag]] == [100, 200, 300, 400], tag
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=False)
    assert last["replay_buffer"]["size"] == 400
    assert "replay_buffer" not in best  # a policy to evaluate does not need it


def test_discrete_run_and_no_buffer_by_default(tmp_path):
    res = train(sac_cfg("cartpole", "algo.train_freq=4", "algo.gradient_steps=2",
                        "trainer.total_steps=402"), tmp_path / "run")
    assert res["status"] == "completed"
    assert res["env_steps"] == 400  # whole feeder steps of train_freq x n_envs
    assert res["grad_steps"] == 2 * (400 - 64) // 4 + 2
    assert math.isfinite(res["eval_return_mean"])
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert "replay_buffer" not in last
    assert read_results(tmp_path / "run")["algo"] == "sac"


# ---- learning (slow) ----------------------------------------------------------------------------
@pytest.mark.slow
def test_sac_learns_pendulum(tmp_path):
    cfg = compose(["algo=sac", "env=pendulum", "seed=0", "trainer.progress=false"])
    res = train(cfg, tmp_path / "run")
    assert res["env_steps"] <= 20_000
    assert res["eval_return_mean"] >= -200, res  # final deterministic eval, 20 episodes


@pytest.mark.slow
def test_discrete_sac_learns_cartpole(tmp_path):
    cfg = compose(["algo=sac", "env=cartpole", "seed=0", "trainer.progress=false"])
    res = train(cfg, tmp_path / "run")
    assert res["env_steps"] <= 100_000
    assert res["eval_return_mean"] >= 400, res


@pytest.mark.parametrize("hidden, batch, threads", [([256, 256], 256, 4), ([400, 300], 256, 4),
                                                    ([64, 64], 256, 4), ([64, 64], 64, 1),
                                                    ([128, 128], 32, 1), ([1024], 256, 1)])
def test_auto_threads_take_every_core_only_for_big_matmuls(hidden, batch, threads):
    algo = make_sac(PENDULUM_ACT, hidden_sizes=hidden, batch_size=batch)
    assert algo.preferred_threads(4) == threads
