"""env.envpool_async: the next rollout is collected while the update runs (its env steps taken
between the update's optimizer steps), acted by the policy from before the update, with every
env's trajectory whole and the results independent of how the steps fall between updates."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from rl_runner.algos.build import build_algo
from rl_runner.checkpoint import seed_everything
from rl_runner.envs import make_vec_env
from rl_runner.rollout_overlap import OverlappedCollector
from rl_runner.trainer import make_feeder
from tests.conftest import FAST, compose, error_line, read_results, run_cli

pytest.importorskip("envpool")
N_STEPS = 32


def setup(seed: int = 7, *overrides: str):
    seed_everything(0)  # the same initial weights every time
    cfg = compose(["algo=ppo", "env=cartpole", f"algo.n_steps={N_STEPS}", *overrides])
    envs = make_vec_env("CartPole-v1", 4, vectorization="envpool", threads=1)
    algo = build_algo(cfg, envs.single_observation_space, envs.single_action_space, "cpu")
    return envs, algo, OverlappedCollector(envs, N_STEPS, seed)


def nudge(algo, amount: float) -> None:
    """Stands in for an update: every parameter moves."""
    with torch.no_grad():
        for p in algo.net.parameters():
            p.add_(amount)


def collect_three(seed: int = 7, grad_steps: int = 0):
    """Rollouts 0, 1, 2 with the policy nudged after each, as updates would, each update taking
    `grad_steps` optimizer steps (the overlapped collector steps the envs after each)."""
    envs, algo, feeder = setup(seed)
    policies, rollouts = [], []
    for k in range(3):
        policies.append(copy.deepcopy(algo))
        rollouts.append(feeder.collect(algo)[0])
        rollouts[-1] = {f: np.array(getattr(rollouts[-1], f)) for f in
                        ("obs", "actions", "log_probs", "rewards", "dones")}
        for _ in range(grad_steps):
            algo.count_grad_step()
        nudge(algo, 0.05 * (k + 1))
    feeder.close()
    envs.close()
    return policies, rollouts


def log_probs(policy, rollout) -> np.ndarray:
    obs, actions = rollout["obs"], rollout["actions"]
    out, _ = policy.outputs(policy.policy_obs(obs.reshape(-1, obs.shape[-1])))
    logits = out - out.max(-1, keepdims=True)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    return np.take_along_axis(logp, actions.reshape(-1, 1).astype(int), 1).reshape(
        actions.shape[:2])


def test_each_rollout_is_acted_by_the_policy_before_the_last_update():
    policies, rollouts = collect_three()
    # rollout 0 now, with the first policy; rollout k + 1 in the background while update k ran
    for k, acting in ((0, 0), (1, 0), (2, 1)):
        np.testing.assert_allclose(rollouts[k]["log_probs"],
                                   log_probs(policies[acting], rollouts[k]), atol=1e-5)
    assert not np.allclose(rollouts[2]["log_probs"], log_probs(policies[2], rollouts[2]),
                           atol=1e-3)


def test_trajectories_are_whole_and_the_same_every_time():
    _, first = collect_three()
    _, again = collect_three()
    for a, b in zip(first, again):
        for field in a:
            np.testing.assert_array_equal(a[field], b[field])
    replay = make_vec_env("CartPole-v1", 4, vectorization="envpool", threads=1)
    obs, _ = replay.reset(seed=7)
    for rollout in first:  # one continuous stream per env across the three rollouts
        for t in range(N_STEPS):
            np.testing.assert_allclose(rollout["obs"][t], obs)
            obs, rewards, terminated, truncated, _ = replay.step(rollout["actions"][t])
            np.testing.assert_array_equal(rollout["rewards"][t], rewards)
            np.testing.assert_array_equal(rollout["dones"][t], terminated | truncated)
    replay.close()


@pytest.mark.parametrize("grad_steps", [5, 32, 100])
def test_the_envs_step_between_the_updates_steps_with_the_same_results(grad_steps):
    _, alone = collect_three()  # every env step taken when the trainer asks for the rollout
    envs, algo, feeder = setup()
    steps = []
    step_wait = envs.step_wait
    envs.step_wait = lambda: steps.append(1) or step_wait()
    feeder.collect(algo)  # rollout 0, collected now
    steps.clear()
    for _ in range(grad_steps):
        algo.count_grad_step()
    # one env step after each optimizer step (the first only sends), at most the rollout's
    assert len(steps) == min(grad_steps - 1, N_STEPS)
    feeder.collect(algo)
    steps.clear()
    for _ in range(grad_steps):  # now spread over as many optimizer steps as the last update's
        algo.count_grad_step()
    assert len(steps) == min(grad_steps * -(-N_STEPS // grad_steps) - 1, N_STEPS)
    feeder.close()
    envs.close()
    _, pumped = collect_three(grad_steps=grad_steps)
    for a, b in zip(alone, pumped):
        for field in a:
            np.testing.assert_array_equal(a[field], b[field])


def test_ppo_trains_with_overlap_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    args = ["algo=ppo", "env=cartpole", "env.vectorization=envpool", "env.envpool_async=true",
            *FAST]
    first = run_cli([*args, "trainer.total_steps=2048"], tmp_path)
    assert first.returncode == 0, first.stderr
    more = run_cli([f"resume={run_dir}", "trainer.total_steps=4096"], tmp_path)
    assert more.returncode == 0, more.stderr
    assert read_results(run_dir)["env_steps"] == 4096


@pytest.mark.parametrize("args, words", [
    (["algo=sac", "env=pendulum"], "sac is off-policy"),
    (["algo=gail", "env=cartpole"],  # the list: every algorithm whose loss corrects for the lag
     "gail learns from demonstrations; algorithms allowed with it: ppo, trpo"),
    (["algo=a2c", "env=cartpole"], "a2c does not correct its loss for that lag"),
    (["algo=ppo", "env=cartpole", "algo.normalize_obs=true"], "algo.normalize_obs=false")])
def test_what_cannot_overlap_is_one_line(tmp_path, args, words):
    proc = run_cli([*args, "env.vectorization=envpool", "env.envpool_async=true", *FAST],
                   tmp_path)
    line = error_line(proc)
    assert words in line and "env.envpool_async=true" in line, line


def test_a_failure_while_collecting_reaches_the_trainer_and_close_still_closes():
    def broken(obs):
        raise RuntimeError("acting failed")

    for take_it in (True, False):
        envs, algo, feeder = setup()
        feeder.collect(algo)  # rollout 0 now; rollout 1 set up, to step during the update
        algo.explore = broken  # the acting copy of rollout 2 inherits it
        feeder.collect(algo)  # rollout 1 back; rollout 2 set up with the broken copy
        if take_it:
            with pytest.raises(RuntimeError, match="acting failed"):
                feeder.collect(algo)
        feeder.close()  # the trainer's own outcome stands: close does not raise it
        envs.close()


@pytest.mark.parametrize("args, vectorization, says", [
    (["algo=ppo", "env=cartpole"], "envpool", None),
    (["algo=trpo", "env=cartpole"], "envpool", None),
    # one update of lag, nothing to correct it
    (["algo=a2c", "env=cartpole"], "envpool", "a2c does not overlap"),
    (["algo=pg", "env=cartpole"], "envpool", "pg does not overlap"),
    # nothing steps apart from the learner
    (["algo=ppo", "env=cartpole"], "sync", "the envs are not EnvPool's"),
    (["algo=ppo", "env=cartpole", "algo.normalize_obs=true"], "envpool",
     "algo.normalize_obs=true"),
    (["algo=sac", "env=pendulum"], "envpool", "sac does not overlap")])
def test_auto_overlaps_wherever_the_run_allows_it(args, vectorization, says, caplog):
    """Else the start says why not (it said nothing: a tester's ppo pendulum preset, with
    normalize_obs, did not overlap without a word)."""
    caplog.set_level("INFO", logger="rl_runner")
    cfg = compose([*args, f"env.vectorization={vectorization}", "env.envpool_async=auto"])
    envs = make_vec_env(cfg.env.id, 2, vectorization=vectorization, threads=1)
    algo = build_algo(cfg, envs.single_observation_space, envs.single_action_space, "cpu")
    feeder = make_feeder(cfg, envs, algo)
    assert isinstance(feeder, OverlappedCollector) is (says is None)
    if says is not None:
        assert f"env.envpool_async=auto: no overlap, {says}" in caplog.text
    feeder.close()
    envs.close()


def test_the_default_does_not_overlap():
    """The lag cost ppo lunarlander return (docs/benchmarks.md): asked for, never the default."""
    cfg = compose(["algo=ppo", "env=cartpole", "env.vectorization=envpool"])
    envs = make_vec_env(cfg.env.id, 2, vectorization="envpool", threads=1)
    algo = build_algo(cfg, envs.single_observation_space, envs.single_action_space, "cpu")
    feeder = make_feeder(cfg, envs, algo)
    assert cfg.env.envpool_async is False and not isinstance(feeder, OverlappedCollector)
    feeder.close()
    envs.close()


def test_close_takes_the_step_in_flight_and_unhooks_the_algorithm():
    envs, algo, feeder = setup()
    feeder.collect(algo)
    algo.count_grad_step()  # an optimizer step: the next rollout's first env step is sent
    assert feeder.in_flight and algo.on_grad_step is not None
    feeder.close()  # as after an update that failed mid-way
    assert not feeder.in_flight and algo.on_grad_step is None
    algo.count_grad_step()  # steps nothing now
    envs.close()


def test_a_plugin_on_policy_algorithm_is_not_overlapped_unless_it_says_so():
    """An OnPolicy subclass that never calls on_grad_step would only get the lag: auto leaves
    it alone, and true names the algorithms that allow it."""
    from rl_runner.algos.contracts import OnPolicy
    from rl_runner.trainer import overlaps_rollouts

    class Plugin(OnPolicy):
        name = "plugin"

    assert not overlaps_rollouts(Plugin)
    assert overlaps_rollouts(type("Lagged", (Plugin,), {"overlaps_rollouts": True}))


@pytest.mark.parametrize("value", ["yes", "1", "'True'", "maybe"])
def test_a_bad_envpool_async_is_one_line(tmp_path, value):
    proc = run_cli(["algo=ppo", "env=cartpole", "env.vectorization=envpool",
                    f"env.envpool_async={value}", *FAST], tmp_path)
    line = error_line(proc)
    assert "env.envpool_async" in line and "auto" in line, line


def lagged_rollout(*overrides: str):
    """A rollout acted by the policy before a nudge (as by the overlap's acting copy), the
    policy after it, and the rollout's log-probabilities under the one before and the one now."""
    envs, algo, feeder = setup(7, "algo.batch_size=32", "algo.n_epochs=2", *overrides)
    rollout = feeder.collect(algo)[0]
    feeder.close()
    envs.close()
    before = copy.deepcopy(algo)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # as an update would move it, enough to move the probabilities
        for p in algo.net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    arrays = {"obs": np.asarray(rollout.obs), "actions": np.asarray(rollout.actions)}
    return rollout, algo, log_probs(before, arrays), log_probs(algo, arrays)


def test_a_lagged_rollout_is_clipped_around_the_policy_now_and_weighed():
    rollout, algo, acted, now = lagged_rollout()
    np.testing.assert_allclose(rollout.log_probs, acted, atol=1e-5)  # acted by the old one
    size = acted.size
    prox, weight = algo.proximal(np.asarray(rollout.obs).reshape(size, -1),
                                 np.asarray(rollout.actions).reshape(size),
                                 np.asarray(rollout.log_probs).reshape(size))
    np.testing.assert_allclose(prox, now.reshape(size), atol=1e-5)
    np.testing.assert_allclose(weight, np.exp(now - acted).reshape(size), rtol=1e-4)
    assert np.abs(weight - 1).max() > 0.2  # the policy moved


def test_the_update_takes_the_correction_only_under_the_overlap():
    """The same lagged rollout: with on_grad_step set (the overlap) the update clips around the
    policy now, without it around the acting one, a different step; both backends agree."""
    steps = {}
    for backend in ("numpy", "torch"):
        for hooked in (False, True):
            rollout, algo, _, _ = lagged_rollout(f"algo.backend={backend}")
            start = torch.cat([p.detach().flatten() for p in algo.net.parameters()])
            algo.on_grad_step = (lambda: None) if hooked else None
            algo.update(rollout)
            end = torch.cat([p.detach().flatten() for p in algo.net.parameters()])
            steps[backend, hooked] = end - start
    for backend in ("numpy", "torch"):
        assert not torch.allclose(steps[backend, False], steps[backend, True], atol=1e-6)
    for hooked in (False, True):
        torch.testing.assert_close(steps["numpy", hooked], steps["torch", hooked],
                                   atol=2e-5, rtol=1e-3)
