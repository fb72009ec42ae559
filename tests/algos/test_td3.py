"""TD3 and DDPG: the target against a hand computation, the update against plain torch autograd,
policy delay, DDPG's single critic, acting, state and resume, refusals; learning checks (slow)."""
from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_runner.algos.mlp_grad import FlushDenormals
from rl_runner.algos.td3 import DDPG, TD3
from rl_runner.batches import ReplayBatch
from rl_runner.errors import UserError
from rl_runner.trainer import train
from tests.algos.helpers import (CARTPOLE_OBS, PENDULUM_ACT, PENDULUM_OBS,
                                 random_replay_batch)
from tests.conftest import FAST, NUMBERS, compose, read_results, read_scalars, run_cli
from tests.test_resume import interrupt_when_checkpointed

BOX2 = gym.spaces.Box(-2, 2, (2,), np.float32)
TAGS = {"losses/qf_loss", "losses/actor_loss", "losses/q_values", "charts/learning_rate"}


def make(cls=TD3, action_space: gym.Space = PENDULUM_ACT, **kw):
    torch.manual_seed(kw.get("seed", 0))  # network initialisation, as the trainer seeds it
    args = dict(observation_space=PENDULUM_OBS, action_space=action_space, n_envs=1,
                total_steps=10_000, seed=0, hidden_sizes=[32, 32], batch_size=64)
    return cls(**{**args, **kw})


random_batch = random_replay_batch


def mlp_numpy(net, x: np.ndarray, relu: bool = True) -> np.ndarray:
    """A ParallelMLP's output [K, B, out] computed in numpy from its weights."""
    h = np.broadcast_to(x, (net.k, *x.shape))
    for i, (w, b) in enumerate(zip(net.weights, net.biases)):
        h = h @ w.detach().numpy() + b.detach().numpy()
        if i < len(net.weights) - 1:
            h = np.maximum(h, 0) if relu else np.tanh(h)
    return h


# ---- the target ---------------------------------------------------------------------------------
def test_target_is_the_clipped_double_q_of_the_smoothed_clipped_target_action():
    algo = make(action_space=BOX2, target_policy_noise=1.0, target_noise_clip=0.5)
    with torch.no_grad():  # the target actor near +1 in the first action: clipping happens
        algo.actor_target.net.biases[-1][0, 0, 0] = 1.5
        algo.critics.target.net.biases[-1].zero_()  # the critics' order then varies by sample
    rng = np.random.default_rng(3)
    next_obs = rng.normal(size=(6, 3)).astype(np.float32)
    rewards, terminated = rng.normal(size=6).astype(np.float32), np.array([0, 1, 0, 0, 1, 0.0])
    noise = torch.randn((6, 2), generator=torch.Generator().set_state(algo.gen.get_state()))
    y = algo.target(torch.from_numpy(rewards), torch.from_numpy(0.99 * (1 - terminated)).float(),
                    torch.from_numpy(next_obs))
    # by hand, in numpy
    mu = np.tanh(mlp_numpy(algo.actor_target.net, next_obs)[0])
    eps = noise.numpy() * 1.0
    clipped_eps = np.clip(eps, -0.5, 0.5)
    a = np.clip(mu + clipped_eps, -1, 1)
    q = mlp_numpy(algo.critics.target.net, np.concatenate([next_obs, a], 1))[..., 0]
    expected = rewards + 0.99 * (1 - terminated) * q.min(0)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-5, atol=1e-5)
    # the case exercises each clip and each critic's min
    assert (np.abs(eps) > 0.5).any() and (np.abs(mu + clipped_eps) > 1).any()
    assert 0 < (q[0] < q[1]).sum() < 6 or algo.n_critics == 1


def test_ddpg_target_is_one_critic_at_the_target_action_without_noise():
    algo = make(DDPG)
    assert algo.critics.net.weights[0].shape[0] == 1  # one critic
    state = algo.gen.get_state()
    next_obs = torch.randn(5, 3)
    y = algo.target(torch.ones(5), torch.full((5,), 0.9), next_obs)
    assert torch.equal(algo.gen.get_state(), state)  # no noise drawn
    mu = np.tanh(mlp_numpy(algo.actor_target.net, next_obs.numpy())[0])
    q = mlp_numpy(algo.critics.target.net, np.concatenate([next_obs.numpy(), mu], 1))[0, :, 0]
    np.testing.assert_allclose(y.numpy(), 1 + 0.9 * q, rtol=1e-5, atol=1e-6)


# ---- the update against autograd ----------------------------------------------------------------
class Reference:
    """TD3 / DDPG written plainly, as SB3's TD3.train: torch.optim.Adam per network, the actor
    loss -Q_1(s, mu(s)) through autograd, Polyak over parameter lists."""

    def __init__(self, algo: TD3):
        self.algo = algo
        self.actor, self.critic = copy.deepcopy(algo.actor), copy.deepcopy(algo.critics.net)
        self.actor_t = copy.deepcopy(algo.actor_target.net)
        self.critic_t = copy.deepcopy(algo.critics.target.net)
        actor_lr = algo.lr if algo.actor_lr is None else algo.actor_lr
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=actor_lr)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=algo.lr)
        self.gen = torch.Generator().set_state(algo.gen.get_state())
        self.n_updates = 0

    def update(self, batch) -> None:
        algo = self.algo
        for g in range(len(batch.rewards)):
            obs, act, nobs, rew, term = (torch.from_numpy(np.ascontiguousarray(x[g])) for x in (
                batch.obs, batch.actions, batch.next_obs, batch.rewards, batch.terminated))
            self.n_updates += 1
            with torch.no_grad():
                a_next = torch.tanh(self.actor_t(nobs)[0])
                if algo.target_policy_noise > 0:
                    noise = torch.randn(a_next.shape, generator=self.gen)
                    noise = (noise * algo.target_policy_noise).clamp(
                        -algo.target_noise_clip, algo.target_noise_clip)
                    a_next = (a_next + noise).clamp(-1, 1)
                q_next = self.critic_t(torch.cat([nobs, a_next], -1))[..., 0].min(0).values
                y = rew + algo.gamma * (1 - term) * q_next
            q = self.critic(torch.cat([obs, act], -1))[..., 0]
            loss = sum(torch.nn.functional.mse_loss(qj, y) for qj in q)
            self.critic_opt.zero_grad()
            loss.backward()
            self.critic_opt.step()
            if self.n_updates % algo.policy_delay == 0:
                q1 = self.critic(torch.cat([obs, torch.tanh(self.actor(obs)[0])], -1))[0, :, 0]
                self.actor_opt.zero_grad()
                (-q1.mean()).backward()
                self.actor_opt.step()
                with torch.no_grad():
                    for online, target in ((self.critic, self.critic_t),
                                           (self.actor, self.actor_t)):
                        for p, pt in zip(online.parameters(), target.parameters()):
                            pt.mul_(1 - algo.tau).add_(algo.tau * p)

    def assert_matches(self) -> None:
        algo = self.algo
        for name, mine, ref in (("actor", algo.actor, self.actor),
                                ("critic", algo.critics.net, self.critic),
                                ("actor_target", algo.actor_target.net, self.actor_t),
                                ("critic_target", algo.critics.target.net, self.critic_t)):
            for (key, value), expected in zip(mine.state_dict().items(),
                                              ref.state_dict().values()):
                torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-6,
                                           msg=lambda m: f"{name}.{key}: {m}")


@pytest.mark.parametrize("cls, settings", [
    (TD3, {}), (TD3, {"activation": "tanh", "hidden_sizes": [16, 24, 8], "policy_delay": 3}),
    (TD3, {"actor_lr": 1e-2, "gradient_steps": 2}), (DDPG, {}), (DDPG, {"gradient_steps": 2})],
    ids=["td3", "td3-tanh-3layers-delay3", "td3-actor_lr-2steps", "ddpg", "ddpg-2steps"])
def test_update_matches_autograd_through_the_first_critic(cls, settings):
    """Every network after each of 4 updates, against plain autograd: the hand-written backward
    passes (critics, dQ_1/da, the actor) give autograd's gradients."""
    algo = make(cls, BOX2, lr=3e-3, **settings)
    ref = Reference(algo)
    for i in range(4):
        batch = random_batch(algo, algo.gradient_steps, seed=i)
        ref.update(batch)
        metrics = algo.update(batch)
        ref.assert_matches()
    assert algo.grad_steps == 4 * algo.gradient_steps
    assert algo.actor_opt.steps == 4 * algo.gradient_steps // algo.policy_delay
    assert set(metrics) == {"qf_loss", "actor_loss", "q_values", "learning_rate"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())


def test_q1_action_grad_matches_autograd():
    algo = make(action_space=BOX2, hidden_sizes=[32, 24, 16])
    obs, actions = torch.randn(64, 3), torch.rand(64, 2) * 2 - 1
    a = actions.clone().requires_grad_(True)
    q1 = algo.critics.net(torch.cat([obs, a], -1))[0, :, 0]
    q1.sum().backward()
    got_q, got_grad = algo.q1_action_grad(obs, actions)
    torch.testing.assert_close(got_q, q1.detach())
    torch.testing.assert_close(got_grad, a.grad)


def denormals_flushed() -> bool:
    return float(FlushDenormals._probe * 1.0) == 0.0


def test_updates_flush_denormals_and_leave_the_mode_as_it_was(monkeypatch):
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU has no flush-to-zero mode that torch sets")
    assert float(FlushDenormals._probe) > 0 and not denormals_flushed()
    algo, seen = make(), []
    step = algo._critic_step
    monkeypatch.setattr(algo, "_critic_step", lambda *a: seen.append(denormals_flushed())
                        or step(*a))
    algo.update(random_batch(algo))
    assert seen == [True] and not denormals_flushed()
    torch.set_flush_denormal(True)  # a mode set outside stays set
    try:
        algo.update(random_batch(algo))
        assert seen == [True, True] and denormals_flushed()
    finally:
        torch.set_flush_denormal(False)


# ---- policy delay -------------------------------------------------------------------------------
def flat(algo: TD3) -> dict[str, torch.Tensor]:
    return {"actor": algo.actor_opt.flat.clone(), "critic": algo.critics.opt.flat.clone(),
            "actor_target": algo.actor_target.flat.clone(),
            "critic_target": algo.critics.target.flat.clone()}


def test_actor_and_targets_change_only_every_policy_delay_critic_steps():
    algo = make(policy_delay=3)
    metrics = []
    for step in range(1, 8):
        before = flat(algo)
        metrics.append(algo.update(random_batch(algo, seed=step)))
        after = flat(algo)
        assert not torch.equal(before["critic"], after["critic"])  # every step
        for name in ("actor", "actor_target", "critic_target"):
            assert torch.equal(before[name], after[name]) == (step % 3 != 0), (name, step)
    assert "actor_loss" not in metrics[0] and "actor_loss" not in metrics[1]
    # updates between actor steps report the last actor loss
    assert metrics[2]["actor_loss"] == metrics[3]["actor_loss"] == metrics[4]["actor_loss"]
    assert metrics[5]["actor_loss"] != metrics[4]["actor_loss"]


def test_policy_delay_counts_critic_steps_across_updates():
    algo = make(policy_delay=2, gradient_steps=3)
    algo.update(random_batch(algo, 3))
    assert (algo.grad_steps, algo.actor_opt.steps) == (3, 1)
    algo.update(random_batch(algo, 3, seed=1))
    assert (algo.grad_steps, algo.actor_opt.steps) == (6, 3)


def test_ddpg_steps_its_actor_every_critic_step_and_refuses_td3_keys():
    algo = make(DDPG)
    assert (algo.policy_delay, algo.target_policy_noise) == (1, 0.0)
    before = flat(algo)
    assert "actor_loss" in algo.update(random_batch(algo))
    after = flat(algo)
    assert not any(torch.equal(before[k], after[k]) for k in before)
    with pytest.raises(UserError, match="algo.policy_delay is not a hyperparameter of ddpg"):
        make(DDPG, policy_delay=2)


def test_ddpg_cli_names_td3_for_its_keys_and_leaves_them_out_of_the_allowed_list(tmp_path):
    for override in ("algo.policy_delay=3", "+algo.target_policy_noise=0.1", "algo.nope=1"):
        r = run_cli(["algo=ddpg", "env=pendulum", override], tmp_path)
        assert r.returncode == 2, r.stderr
        line = r.stderr.strip().splitlines()[-1]
        allowed = line.split("allowed: ")[1].split(", ")
        assert "action_noise" in allowed and not {"policy_delay", "target_policy_noise",
                                                  "target_noise_clip"} & set(allowed), line
    assert not (tmp_path / "run").exists()


# ---- acting -------------------------------------------------------------------------------------
def test_exploration_noise_has_the_asked_std_and_stays_in_bounds():
    space = gym.spaces.Box(np.array([0.0, -1.0], np.float32), np.array([3.0, 5.0], np.float32))
    algo = make(action_space=space, action_noise=0.3)
    obs = np.zeros((20_000, 3), np.float32)
    with torch.no_grad():  # a policy mean of 0: the clip to [-1, 1] hardly cuts the noise
        algo.actor.weights[-1].zero_()
        algo.actor.biases[-1].zero_()
        mu = algo._policy(algo.actor_layers, torch.from_numpy(obs)).numpy()
    explored = algo.explore(obs)
    assert np.abs(explored).max() <= 1.0  # the buffer keeps the policy space
    assert not mu.any()
    assert np.std(explored - mu) == pytest.approx(0.3, rel=0.03)
    env_actions = algo.act(obs[:512])
    assert (env_actions >= space.low).all() and (env_actions <= space.high).all()
    with torch.no_grad():
        algo.actor.biases[-1][0, 0] = torch.tensor([50.0, -50.0])  # means far outside
    np.testing.assert_allclose(algo.act(obs[:4], deterministic=True), np.tile([3.0, -1.0], (4, 1)))
    quiet = make(action_space=space, action_noise=0.0)
    np.testing.assert_array_equal(quiet.act(obs[:8]), quiet.act(obs[:8], deterministic=True))


def test_bad_spaces_fail_with_one_clear_line():
    with pytest.raises(UserError, match="td3 takes Box actions"):
        make(action_space=gym.spaces.Discrete(2), observation_space=CARTPOLE_OBS)
    with pytest.raises(UserError, match="ddpg takes vector observations"):
        make(DDPG, observation_space=gym.spaces.Box(0, 255, (4, 84, 84), np.uint8))
    with pytest.raises(UserError, match="RescaleAction"):
        make(action_space=gym.spaces.Box(-np.inf, np.inf, (1,), np.float32))


@pytest.mark.parametrize("algo", ["td3", "ddpg"])
def test_a_discrete_env_is_refused_with_one_line_and_exit_2(algo, tmp_path):
    proc = run_cli([f"algo={algo}", "env=cartpole", *FAST], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{algo} cannot handle the action space Discrete(2)" in lines[0]
    assert "algorithms that can:" in lines[0] and "sac" in lines[0].split("can:")[1]
    assert "td3" not in lines[0].split("can:")[1] and "ddpg" not in lines[0].split("can:")[1]
    assert not (tmp_path / "run" / "results.json").exists()


# ---- state --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [TD3, DDPG])
def test_state_dict_round_trip(cls, tmp_path):
    a = make(cls, action_space=BOX2)
    for i in range(3):
        a.update(random_batch(a, seed=i))
    torch.save(a.state_dict(), tmp_path / "state.pt")
    b = make(cls, action_space=BOX2, seed=7)
    b.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))  # plain data
    assert b.grad_steps == 3 and b.last_actor_loss == a.last_actor_loss
    for i in (10, 11):  # the actor steps on one of the two under policy_delay=2
        batch = random_batch(a, seed=i)
        assert a.update(batch) == b.update(batch)  # same noise stream, same optimizer moments
    for name, value in flat(a).items():
        assert torch.equal(value, flat(b)[name]), name
    obs = np.zeros((4, 3), np.float32)
    np.testing.assert_array_equal(a.explore(obs), b.explore(obs))
    # parameters still views into the flat buffers, critic 1's slices too
    assert b.critics.net.weights[0].data_ptr() == b.critics.opt.flat.data_ptr()
    assert b.q1_layers[0][0].data_ptr() == b.critics.opt.flat.data_ptr()
    assert b.actor_target.net.weights[0].data_ptr() == b.actor_target.flat.data_ptr()


# ---- through the trainer ------------------------------------------------------------------------
def test_pendulum_run_logs_the_td3_curves(tmp_path):
    cfg = compose(["algo=td3", "env=pendulum", "env.n_envs=1", "algo.hidden_sizes=[32,32]",
                   "algo.batch_size=32", "algo.learning_starts=64", *FAST,
                   "trainer.total_steps=400", "trainer.eval_every=200"])
    res = train(cfg, tmp_path / "run")
    assert res["status"] == "completed" and res["grad_steps"] == 400 - 64 + 1
    scalars = read_scalars(tmp_path / "run" / "tb")
    assert TAGS <= set(scalars), TAGS - set(scalars)
    assert [step for step, _ in scalars["losses/actor_loss"]] == [100, 200, 300, 400]


RESUME_ARGS = ["algo=td3", "env=pendulum", "env.n_envs=1", *FAST, "algo.hidden_sizes=[32,32]",
               "algo.batch_size=64", "algo.learning_starts=200", "trainer.total_steps=1000",
               "trainer.checkpoint_every=200", "trainer.eval_every=500",
               "trainer.torch_threads=1", "trainer.save_replay_buffer=true", "seed=1"]


def test_resume_with_the_replay_buffer_gives_the_uninterrupted_run(tmp_path):
    """SIGINT after the first checkpoint, then `rl-run resume=`: the numbers and curves of the
    uninterrupted run (as tests/test_resume.py checks for sac)."""
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    a = run_cli([*RESUME_ARGS, f"hydra.run.dir={a_dir}"], tmp_path)
    assert a.returncode == 0, a.stderr
    stopped = interrupt_when_checkpointed(RESUME_ARGS, b_dir, tmp_path)
    assert stopped.returncode == 130, stopped.stderr
    assert 200 <= read_results(b_dir)["env_steps"] < 1000  # stopped mid-run, after updates began
    resumed = run_cli([f"resume={b_dir}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    ra, rb = read_results(a_dir), read_results(b_dir)
    assert {k: rb[k] for k in NUMBERS} == {k: ra[k] for k in NUMBERS}
    sa, sb = read_scalars(a_dir / "tb"), read_scalars(b_dir / "tb")
    for tag in (*sorted(TAGS), "charts/episodic_return", "eval/return_mean"):
        assert sb[tag] == sa[tag], tag


# ---- learning (slow) ----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("algo, bar", [("td3", -200), ("ddpg", -250)])
def test_learns_pendulum_with_the_preset(algo, bar, tmp_path):
    """The issue's bar: the mean over seeds 0-2 of the final deterministic evaluation (20
    episodes) after the preset's 20k env steps (RL Zoo: 10k of them random warm-up)."""
    finals = []
    for seed in (0, 1, 2):
        cfg = compose([f"algo={algo}", "env=pendulum", f"seed={seed}", "trainer.progress=false",
                       "trainer.torch_threads=1"])
        res = train(cfg, tmp_path / f"s{seed}")
        assert res["env_steps"] == 20_000
        finals.append(res["eval_return_mean"])
    print(f"{algo} pendulum finals, seeds 0-2: {finals}, mean {np.mean(finals):.1f}")
    assert np.mean(finals) >= bar, finals


@pytest.mark.parametrize("cls", [TD3, DDPG])
def test_td3_and_ddpg_start_from_nn_linears_init(cls):
    """Actor and critics as the TD3 authors' code and SB3 start them: weights and biases
    uniform in +-1/sqrt(fan_in), not the actor-critics' orthogonal init with zero biases."""
    algo = make(cls, hidden_sizes=[64, 64])
    for net in (algo.actor, algo.critics.net):
        for w, b in net._layers:
            bound = 1.0 / math.sqrt(w.shape[1])
            assert 0.9 * bound < w.abs().max() <= bound
            assert 0 < b.abs().max() <= bound


def test_acting_in_numpy_is_the_torch_actor_and_draws_the_same_noise():
    """td3 acts through a numpy forward of its actor (HostActor) on the weights as they are
    after updates: tanh(mu(s)) as the torch forward has it, and explore adds action_noise
    times the learner generator's next normals, clipped to [-1, 1]."""
    algo = make(action_noise=2.0)
    assert algo.host_actor is not None
    obs = np.random.default_rng(1).normal(size=(64, 3)).astype(np.float32)
    for i in range(3):
        with torch.no_grad():
            want = algo._policy(algo.actor_layers, torch.from_numpy(obs)).numpy()
        np.testing.assert_allclose(algo.mode(obs), want, rtol=1e-5, atol=1e-6)
        state = algo.gen.get_state()
        got = algo.explore(obs)
        algo.gen.set_state(state)
        noise = torch.randn(want.shape, generator=algo.gen).numpy()
        np.testing.assert_allclose(got, np.clip(want + 2.0 * noise, -1, 1), rtol=1e-5,
                                   atol=1e-6)
        assert got.dtype == np.float32 and (np.abs(got) == 1).any()
        algo.update(random_batch(algo, 2, seed=i))


@pytest.mark.parametrize("cls", [TD3, DDPG])
def test_updates_match_sb3s_train_on_the_same_weights_and_batches(cls):
    """SB3's TD3.train (DDPG: its subclass's settings) from the same weights on the same
    minibatches ends at our actor, critics and targets: four critic steps, two (TD3) or four
    (DDPG) actor steps and the targets' Polyak steps. Target smoothing noise is 0 on both sides
    (each draws it from its own generator; tests above check ours)."""
    pytest.importorskip("stable_baselines3")  # the bench extra, not the test extra
    from stable_baselines3 import DDPG as SB3DDPG
    from stable_baselines3 import TD3 as SB3TD3
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.type_aliases import ReplayBufferSamples

    env = gym.make("Pendulum-v1")
    extra = {"target_policy_noise": 0.0} if cls is TD3 else {}
    sb3 = (SB3TD3 if cls is TD3 else SB3DDPG)(
        "MlpPolicy", env, learning_rate=1e-2, tau=0.1, policy_kwargs=dict(net_arch=[16, 8]),
        device="cpu", seed=0, **extra)
    algo = make(cls, lr=1e-2, tau=0.1, hidden_sizes=[16, 8], batch_size=32, **extra)
    ours = [(algo.actor, [sb3.actor.mu])]
    critics = list(sb3.critic.q_networks)
    ours.append((algo.critics.net, critics))
    with torch.no_grad():  # ours: x @ W[k] + b[k]; theirs: W x + b
        for net, seqs in ours:
            for k, seq in enumerate(seqs):
                linears = [m for m in seq if isinstance(m, torch.nn.Linear)]
                for w, b, lin in zip(net.weights, net.biases, linears):
                    w[k].copy_(lin.weight.T)
                    b[k, 0].copy_(lin.bias)
        algo.actor_target.flat.copy_(algo.actor_opt.flat)  # SB3's targets start as copies
        algo.critics.target.flat.copy_(algo.critics.opt.flat)
    rng = np.random.default_rng(0)
    G, B = 4, 32
    batch = ReplayBatch(rng.normal(size=(G, B, 3)).astype(np.float32),
                        rng.uniform(-1, 1, (G, B, 1)).astype(np.float32),
                        (3 * rng.normal(size=(G, B))).astype(np.float32),
                        (rng.random((G, B)) < 0.2).astype(np.float32),
                        rng.normal(size=(G, B, 3)).astype(np.float32), 0)
    samples = iter(ReplayBufferSamples(*(torch.from_numpy(x[g]) for x in (
        batch.obs, batch.actions, batch.next_obs, batch.terminated[..., None],
        batch.rewards[..., None]))) for g in range(G))
    sb3.replay_buffer.sample = lambda *args, **kwargs: next(samples)
    sb3.set_logger(configure(None, []))
    sb3.train(gradient_steps=G, batch_size=B)
    algo.update(batch)
    env.close()
    pairs = [(algo.actor, [sb3.actor.mu]), (algo.actor_target.net, [sb3.actor_target.mu]),
             (algo.critics.net, critics),
             (algo.critics.target.net, list(sb3.critic_target.q_networks))]
    for net, seqs in pairs:
        for k, seq in enumerate(seqs[:net.k]):
            linears = [m for m in seq if isinstance(m, torch.nn.Linear)]
            for w, b, lin in zip(net.weights, net.biases, linears):
                torch.testing.assert_close(w[k], lin.weight.T.detach(), rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(b[k, 0], lin.bias.detach(), rtol=1e-4, atol=1e-5)
    assert not torch.equal(algo.actor_target.flat, algo.actor_opt.flat)  # the targets moved
