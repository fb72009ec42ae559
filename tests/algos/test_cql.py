"""CQL: the conservative term on hand-checked numbers, its effect on Q, alpha' tuning, runs."""
from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from rl_runner.algos.build import build_algo
from rl_runner.algos.cql import CQL, DiscreteCQL
from rl_runner.algos.sac import squashed_gaussian
from rl_runner.batches import OfflineBatch
from rl_runner.errors import UserError
from rl_runner.trainer import train
from tests.algos.helpers import PENDULUM_ACT, PENDULUM_OBS
from tests.conftest import FAST, compose, read_scalars


def make_cql(action_space=PENDULUM_ACT, obs_space=PENDULUM_OBS, **kw) -> CQL | DiscreteCQL:
    """The class algo=cql builds for the action space."""
    torch.manual_seed(0)
    args = dict(observation_space=obs_space, action_space=action_space, n_envs=1,
                total_steps=1000, seed=0, hidden_sizes=[32, 32], batch_size=64)
    return CQL.variant_for(action_space)(**{**args, **kw})


def test_discrete_term_is_logsumexp_minus_the_dataset_q_by_hand():
    cql = make_cql(gym.spaces.Discrete(2), gym.spaces.Box(-1, 1, (4,), np.float32),
                   cql_weight=2.0)
    q_KBA = torch.tensor([[[1.0, 2.0], [0.0, 0.0]], [[3.0, 1.0], [1.0, 1.0]]])
    q_KB = torch.tensor([[2.0, 0.0], [3.0, 1.0]])  # the dataset took actions 1, then 0
    lse = [(math.log(math.exp(1) + math.exp(2)) + math.log(2)) / 2,
           (math.log(math.exp(3) + math.exp(1)) + (1 + math.log(2))) / 2]
    gaps = [lse[0] - 1.0, lse[1] - 2.0]
    penalty, stats = cql.learner.critic_penalty(None, None, q_KB, q_KBA)
    assert penalty.item() == pytest.approx(2.0 * sum(gaps), rel=1e-6)
    assert stats["q_data"] == pytest.approx(1.5)
    assert stats["cql_gap"] == pytest.approx(sum(gaps) / 2, rel=1e-6)
    assert stats["cql_alpha"] == 2.0


def test_box_logsumexp_matches_a_loop_over_the_importance_weighted_samples():
    cql = make_cql(n_action_samples=3)
    sac = cql.sac
    obs = torch.randn(5, 3)
    next_obs = torch.randn(5, 3)
    state = sac.gen.get_state()
    got = sac.logsumexp_q(obs, next_obs)
    sac.gen.set_state(state)  # the same draws, in the same order, one state at a time below
    with torch.no_grad():
        rand = torch.rand((15, 1), generator=sac.gen) * 2 - 1
        m, ls = sac._actor_out(obs.repeat_interleave(3, 0))
        a_cur, lp_cur = squashed_gaussian(m, ls, torch.randn(m.shape, generator=sac.gen))
        m, ls = sac._actor_out(next_obs.repeat_interleave(3, 0))
        a_nxt, lp_nxt = squashed_gaussian(m, ls, torch.randn(m.shape, generator=sac.gen))
        for b in range(5):
            terms = []
            for k in range(2):
                row = []
                for i in range(3 * b, 3 * b + 3):
                    for a, log_density in ((rand[i], -math.log(2.0)), (a_cur[i], lp_cur[i]),
                                           (a_nxt[i], lp_nxt[i])):
                        q = sac.q(torch.cat([obs[b], a])[None])[k, 0, 0]
                        row.append(q - log_density)
                terms.append(torch.logsumexp(torch.stack(row), 0))
            # the mean over the 9 importance-weighted samples, not their sum
            np.testing.assert_allclose(got[:, b].detach().numpy(),
                                       torch.stack(terms).numpy() - math.log(9), rtol=1e-5)


def batch_of(obs, actions, rng) -> OfflineBatch:
    n = len(obs)
    return OfflineBatch(obs, actions, rng.normal(size=n).astype(np.float32),
                        obs + rng.normal(0, 0.1, obs.shape).astype(np.float32), np.zeros(n, bool))


def test_the_term_keeps_q_of_unseen_actions_below_the_datas():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(64, 3)).astype(np.float32)
    actions = np.full((64, 1), 1.5, np.float32)  # the data only ever pushes +1.5
    gaps = {}
    for weight in (0.0, 5.0):
        cql = make_cql(cql_weight=weight)
        for _ in range(150):
            cql.update(batch_of(obs, actions, rng))
        x = torch.from_numpy(obs)
        with torch.no_grad():
            q_data = cql.sac.q(torch.cat([x, torch.full((64, 1), 0.75)], -1)).mean()
            q_other = cql.sac.q(torch.cat([x, torch.full((64, 1), -0.75)], -1)).mean()
        gaps[weight] = (q_data - q_other).item()
    assert gaps[5.0] > gaps[0.0] + 1.0


def test_lagrange_raises_alpha_prime_while_the_gap_exceeds_its_target():
    for target, direction in ((-100.0, 1), (100.0, -1)):
        cql = make_cql(lagrange=True, target_gap=target)
        before = cql.term.alpha_prime().item()
        rng = np.random.default_rng(0)
        metrics = cql.update(batch_of(rng.normal(size=(64, 3)).astype(np.float32),
                                      rng.uniform(-2, 2, (64, 1)).astype(np.float32), rng))
        assert metrics["cql_alpha"] == before  # alpha' as the critics' step used it
        assert (cql.term.alpha_prime().item() - before) * direction > 0


def test_cql_through_the_trainer_logs_q_data_and_naive_sac_does_too(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    args = ["algo=cql", "env=cartpole", *FAST, "dataset.expert_episodes=1",
            "algo.hidden_sizes=[32,32]", "trainer.total_steps=200", "trainer.eval_every=100"]
    res = train(compose(args), tmp_path / "cql")
    assert res["grad_steps"] == 200 == res["env_steps"]
    tags = set(read_scalars(tmp_path / "cql" / "tb"))
    assert {"losses/q_data", "losses/cql_gap", "losses/qf_loss", "eval/return_mean"} <= tags
    train(compose([*args, "algo.cql_weight=0"]), tmp_path / "naive")
    tags = set(read_scalars(tmp_path / "naive" / "tb"))
    assert "losses/q_data" in tags and "losses/cql_gap" not in tags


@pytest.mark.slow
def test_cql_learns_cartpole_from_two_expert_episodes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    res = train(compose(["algo=cql", "env=cartpole", "trainer.progress=false",
                         "dataset.expert_episodes=2", "trainer.total_steps=1000",
                         "trainer.eval_every=1000"]), tmp_path / "run")
    assert res["eval_return_mean"] >= 475


def test_discrete_q_learner_steps_towards_the_double_dqn_target():
    from rl_runner.algos.qlearn import QLearner
    from rl_runner.batches import ReplayBatch

    q = QLearner(obs_dim=2, n_actions=3, start=5, hidden_sizes=[8], lr=1e-2, gamma=0.9,
                 tau=0.5, seed=0)
    obs = np.array([[0.5, -1.0], [1.0, 2.0]], np.float32)
    next_obs = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    with torch.no_grad():  # perturb the target so that its argmax and the online one differ
        q.target.flat.add_(torch.randn(q.target.flat.shape, generator=torch.Generator()
                                       .manual_seed(1)))
        online, target = q.net(torch.from_numpy(next_obs))[0], q.target.net(
            torch.from_numpy(next_obs))[0]
        q_sa = q.net(torch.from_numpy(obs))[0, [0, 1], [2, 0]]
    best = online.argmax(-1)
    y = np.array([1.0, -1.0]) + 0.9 * np.array([1.0, 0.0]) * target[[0, 1], best].numpy()
    assert not torch.equal(best, target.argmax(-1))  # the test tells the two targets apart
    batch = ReplayBatch(obs[None], np.array([[[2.0], [0.0]]], np.float32),
                        np.array([[1.0, -1.0]], np.float32), np.array([[0.0, 1.0]], np.float32),
                        next_obs[None], 0)
    before = np.abs(q_sa.numpy() - y)
    metrics = q.update(batch)
    with torch.no_grad():
        after = np.abs(q.net(torch.from_numpy(obs))[0, [0, 1], [2, 0]].numpy() - y)
    huber = np.where(before < 1, 0.5 * before ** 2, before - 0.5).mean()
    assert metrics["qf_loss"] == pytest.approx(huber, rel=1e-5)
    assert after.sum() < before.sum() and q.grad_steps == 1
    with torch.no_grad():  # the space's own numbers: argmax + start
        expected = q.net(torch.from_numpy(obs))[0].argmax(-1).numpy() + 5
    np.testing.assert_array_equal(q.act(obs, deterministic=True), expected)


def test_discrete_policy_keeps_its_actions_where_q_barely_tells_the_actions_apart():
    """Reward 1 forever whatever the action: Q climbs towards 100 for both actions and only the
    conservative term parts them (a median gap of 0.3 to 0.55 at Q = 36 here), as on CartPole's
    states where either action keeps the pole up. The online network's argmax then flips on
    0.55% to 1.1% of the states per Adam step (seeds 0-3); the averaged (target) network's,
    the one the policy reads, on 0.006% to 0.03%."""
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(2000, 4)).astype(np.float32)
    next_obs = rng.normal(size=(2000, 4)).astype(np.float32)
    actions = (rng.random(2000) < 0.3).astype(np.int64)
    cql = make_cql(gym.spaces.Discrete(2), gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
                   lr=1e-3, tau=0.02, cql_weight=1.0)
    flips, before = [], None
    for step in range(2000):
        i = rng.integers(0, 2000, 64)
        cql.update(OfflineBatch(obs[i], actions[i], np.ones(64, np.float32), next_obs[i],
                                np.zeros(64, bool)))
        if step >= 1800:  # Q near 36 by then, rising
            now = cql.act(obs[:500], deterministic=True)
            if before is not None:
                flips.append(np.mean(now != before))
            before = now
    assert np.mean(flips) < 1e-3


def test_without_the_entropy_backup_the_target_holds_no_alpha_log_pi():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(64, 3)).astype(np.float32)
    batch = OfflineBatch(obs, rng.uniform(-2, 2, (64, 1)).astype(np.float32),
                         np.zeros(64, np.float32), obs, np.zeros(64, bool))
    q = {}
    for backup in (True, False):  # zero rewards: only the entropy term can lift Q
        cql = make_cql(cql_weight=0, ent_coef=10.0, lr=1e-2, backup_entropy=backup)
        for _ in range(100):
            metrics = cql.update(batch)
        q[backup] = metrics["q_data"]
    assert q[True] > 5 and abs(q[False]) < 1


# ---- one algo= name, a class per action space ---------------------------------------------------
BOX_ONLY = {"n_action_samples": 2, "actor_lr": 1e-3, "backup_entropy": True, "ent_coef": 0.1}


def test_algo_cql_builds_one_class_per_action_space_each_with_its_own_keys():
    assert CQL.variant_for(PENDULUM_ACT) is CQL
    assert CQL.variant_for(gym.spaces.Discrete(2)) is DiscreteCQL
    assert CQL.supports(PENDULUM_ACT) and CQL.supports(gym.spaces.Discrete(2))
    assert not CQL.supports(gym.spaces.MultiDiscrete([2, 2]))
    make_cql(**BOX_ONLY)
    discrete = (gym.spaces.Discrete(2), gym.spaces.Box(-1, 1, (4,), np.float32))
    for key, value in BOX_ONLY.items():  # no Box key is silently ignored for Discrete actions
        with pytest.raises(UserError, match=f"algo.{key} is not a hyperparameter of cql"):
            make_cql(*discrete, **{key: value})


def test_a_box_only_key_on_a_discrete_env_is_refused_with_one_line():
    cfg = compose(["algo=cql", "env=cartpole", "+algo.actor_lr=1e-3"])
    env = gym.make("CartPole-v1")
    with pytest.raises(UserError) as err:
        build_algo(cfg, env.observation_space, env.action_space)
    assert "algo.actor_lr is not a hyperparameter of cql" in str(err.value)
    assert "\n" not in str(err.value)
    env.close()
    pendulum = gym.make("Pendulum-v1")
    algo = build_algo(compose(["algo=cql", "env=pendulum", "+algo.actor_lr=1e-3"]),
                      pendulum.observation_space, pendulum.action_space)
    assert isinstance(algo, CQL) and algo.sac.actor_lr == 1e-3
    pendulum.close()


@pytest.mark.parametrize("discrete", [False, True], ids=["box", "discrete"])
@pytest.mark.parametrize("lagrange", [False, True])
def test_state_round_trip_continues_identically_in_the_old_layout(discrete, lagrange):
    spaces = (gym.spaces.Discrete(3), gym.spaces.Box(-1, 1, (3,), np.float32)) if discrete \
        else (PENDULUM_ACT, PENDULUM_OBS)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(64, 3)).astype(np.float32)
    actions = rng.integers(0, 3, 64) if discrete else rng.uniform(-2, 2, (64, 1)).astype(
        np.float32)
    a = make_cql(*spaces, lagrange=lagrange)
    for _ in range(3):
        a.update(batch_of(obs, actions, rng))
    state = a.state_dict()
    assert set(state) == {"learner", "log_alpha_prime", "alpha_prime_opt"}  # as before the split
    b = make_cql(*spaces, lagrange=lagrange, seed=5)
    b.load_state_dict(state)
    assert b.grad_steps == 3
    batch = batch_of(obs, actions, np.random.default_rng(1))
    assert a.update(batch) == b.update(batch)
    with pytest.raises(UserError, match="train it again"):  # the layout before the learners
        b.load_state_dict({"sac": {}, "log_alpha_prime": torch.zeros(1)})


def test_lr_zero_builds(tmp_path):
    """The actor's lr is its own, not a ratio of lr (which divided by zero at lr=0)."""
    cql = make_cql(lr=0.0)
    rng = np.random.default_rng(0)
    cql.update(batch_of(rng.normal(size=(64, 3)).astype(np.float32),
                        rng.uniform(-2, 2, (64, 1)).astype(np.float32), rng))
    assert cql.sac.actor_opt.lr == 1e-4
