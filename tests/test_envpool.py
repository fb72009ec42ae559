"""env.vectorization=envpool: EnvPool's envs with the semantics of SyncVectorEnv's SAME_STEP
autoreset (final observations, terminated vs truncated, seeds), and its refusals."""
from __future__ import annotations

import numpy as np
import pytest

from rl_runner import envpool_env
from rl_runner.envs import make_vec_env
from rl_runner.errors import UserError
from tests.conftest import FAST, REPO, error_line, read_results, run_cli
from tests.helpers.plain_env import MODULE_ENV_ID

pytest.importorskip("envpool")


def run_until_done(envs, steps: int = 600, action=None):
    """Step with `action` (or samples) until some env's episode ends; that step's results."""
    for _ in range(steps):
        a = envs.action_space.sample() if action is None else action
        out = envs.step(a)
        if (out[2] | out[3]).any():
            return out
    raise AssertionError(f"no episode ended in {steps} steps")


def test_ended_episodes_restart_in_the_same_step():
    envs = make_vec_env("CartPole-v1", 4, vectorization="envpool", threads=1)
    envs.reset(seed=0)
    obs, rewards, terminated, truncated, info = run_until_done(envs, action=np.ones(4, int))
    ended = np.flatnonzero(terminated)
    assert len(ended) and not truncated.any()
    for i in ended:
        final = info["final_obs"][i]
        # the final state is past CartPole's limits; the returned one starts an episode
        assert abs(final[0]) > 2.4 or abs(final[2]) > 0.2095, final
        assert np.all(np.abs(obs[i]) <= 0.05), obs[i]
    assert info["_final_obs"].tolist() == terminated.tolist()
    envs.close()


def test_time_limit_truncates_and_keeps_the_final_observation():
    envs = make_vec_env("Pendulum-v1", 2, vectorization="envpool", threads=1)
    obs, _ = envs.reset(seed=1)
    for t in range(200):
        obs, _, terminated, truncated, info = envs.step(np.zeros((2, 1), np.float32))
        if t < 199:
            assert not truncated.any()
    assert truncated.all() and not terminated.any()
    assert np.stack(list(info["final_obs"])).shape == (2, 3)
    envs.close()


def test_seeds_decide_the_episodes():
    def first(seed):
        envs = make_vec_env("CartPole-v1", 3, vectorization="envpool", threads=1)
        obs, _ = envs.reset(seed=seed)
        again, _ = envs.reset(seed=seed + 1)  # a new seed: a new pool, other starts
        envs.close()
        return obs, again

    a, a_next = first(5)
    b, _ = first(5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, a_next)
    assert not np.array_equal(a[0], a[1])  # env i gets seed + i


def test_spaces_are_gymnasiums():
    envs = make_vec_env("LunarLander-v3", 2, vectorization="envpool", threads=1)
    sync = make_vec_env("LunarLander-v3", 2)
    assert envs.single_observation_space == sync.single_observation_space
    assert envs.single_action_space == sync.single_action_space
    envs.close()
    sync.close()


def test_auto_picks_envpool_where_it_has_the_id():
    assert envpool_env.resolve("auto", "CartPole-v1", None) == "envpool"
    assert envpool_env.resolve("auto", MODULE_ENV_ID, None) == "sync"
    assert envpool_env.resolve("sync", "CartPole-v1", None) == "sync"
    with pytest.raises(UserError, match="allowed: sync, async, envpool, auto"):
        envpool_env.resolve("threads", "CartPole-v1", None)


@pytest.mark.parametrize("value", ["null", "3", "envpol", "SYNC"])
def test_a_bad_vectorization_names_the_backends(value):
    from rl_runner.config import check_trainer
    from tests.conftest import compose

    with pytest.raises(UserError, match="env.vectorization=.* is not known; allowed: sync, "
                                        "async, envpool, auto"):
        check_trainer(compose(["algo=ppo", "env=cartpole", f"env.vectorization={value}"]))


def test_raw_atari_frames_point_to_env_atari(tmp_path):
    """EnvPool always preprocesses Atari: the raw-frame id is refused with the way to its twin,
    in one line (ale-py's banner kept off stderr)."""
    pytest.importorskip("ale_py")
    proc = run_cli(["algo=ppo", "env=gym", "env.id=ALE/Pong-v5", "env.vectorization=envpool",
                    *FAST], tmp_path)
    line = error_line(proc)
    assert "only with its Atari preprocessing" in line and "env=atari env.id=ALE/Pong-v5" in line


def test_kwargs_without_an_envpool_twin_are_refused():
    with pytest.raises(UserError, match="enable_wind.*no EnvPool equivalent"):
        make_vec_env("LunarLander-v3", 2, {"enable_wind": True}, vectorization="envpool")


def test_auto_takes_sync_where_envpool_has_the_id_but_not_the_settings(caplog):
    """auto is EnvPool where it can step the env as configured: kwargs EnvPool lacks, or
    spaces that differ from gymnasium's (CliffWalking: a scalar against a one-hot), give sync
    with a line saying why; envpool_async=true then names the reason in its refusal."""
    caplog.set_level("INFO", logger="rl_runner")
    for env_id, kwargs, why in (("LunarLander-v3", {"enable_wind": True}, "enable_wind"),
                                ("CliffWalking-v1", {}, "observes")):
        assert envpool_env.resolve("auto", env_id, None) == "envpool"  # EnvPool has the id
        envs = make_vec_env(env_id, 2, kwargs, vectorization="auto", threads=1)
        assert envs.backend == "sync" and not isinstance(envs, envpool_env.EnvPoolVectorEnv)
        envs.close()
        assert f"sync, not envpool, for {env_id}" in caplog.text and why in caplog.text
    with pytest.raises(UserError, match="auto gives sync here.*enable_wind"):
        make_vec_env("LunarLander-v3", 2, {"enable_wind": True}, vectorization="auto",
                     envpool_async=True)
    envs = make_vec_env("LunarLander-v3", 2, vectorization="auto", threads=1)
    assert envs.backend == "envpool"
    envs.close()


def test_atari_whole_games_and_lives():
    atari = {"noop_max": 30, "frame_skip": 4, "screen_size": 84, "grayscale": True,
             "frame_stack": 4, "episodic_life": True, "fire_reset": True, "clip_reward": True}
    envs = make_vec_env("BreakoutNoFrameskip-v4", 2, vectorization="envpool", atari=atari,
                        training=True, threads=1)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    lives_ended = games = 0
    rng = np.random.default_rng(0)
    for _ in range(3000):
        obs, rewards, terminated, truncated, info = envs.step(rng.integers(0, 4, 2))
        assert set(np.unique(rewards)) <= {0.0, 1.0}  # clipped
        final = info.get("final_info")
        games += 0 if final is None else int(final["_episode"].sum())
        lives_ended += int(terminated.sum())
        if games:
            break
    assert games >= 1 and lives_ended >= 5  # a game of Breakout has 5 lives
    assert final["episode"]["l"][final["_episode"]].min() > 0
    envs.close()


def test_unknown_id_names_the_backends_that_work(tmp_path):
    proc = run_cli(["algo=ppo", "env=gym", f"env.id={MODULE_ENV_ID}", "env.vectorization=envpool",
                    *FAST], tmp_path, pythonpath=REPO)
    line = error_line(proc)
    assert "EnvPool has no twin" in line and "sync, async" in line, line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_ppo_trains_on_envpool_and_evaluates_on_gymnasium(tmp_path):
    proc = run_cli(["algo=ppo", "env=cartpole", "env.vectorization=envpool", "seed=0",
                    "trainer.total_steps=2048", *FAST], tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = read_results(tmp_path / "run")
    assert results["env_steps"] == 2048 and results["eval_episodes"] == 2


def test_resume_says_the_episodes_restart_and_trains_on(tmp_path):
    run_dir = tmp_path / "run"
    first = run_cli(["algo=ppo", "env=cartpole", "env.vectorization=envpool", *FAST,
                     "trainer.total_steps=2048"], tmp_path)
    assert first.returncode == 0, first.stderr
    more = run_cli([f"resume={run_dir}", "trainer.total_steps=4096"], tmp_path)
    assert more.returncode == 0, more.stderr
    assert "EnvPool cannot save its envs mid-episode" in more.stdout + more.stderr
    assert read_results(run_dir)["env_steps"] == 4096


def test_envpool_async_needs_envpool(tmp_path):
    proc = run_cli(["algo=ppo", "env=cartpole", "env.envpool_async=true", *FAST], tmp_path)
    line = error_line(proc)
    assert "env.envpool_async=true" in line and "allowed with it: envpool" in line, line


def test_atari_keeps_the_ids_settings_unless_kwargs_say():
    from rl_runner.config import atari_options

    v5 = envpool_env.pool_kwargs("ALE/Breakout-v5", {}, atari_options({}))
    assert v5["repeat_action_probability"] == 0.25 and v5["max_episode_steps"] == 27000
    v4 = envpool_env.pool_kwargs("BreakoutNoFrameskip-v4", {"repeat_action_probability": 0.1},
                                 atari_options({}))
    assert v4["repeat_action_probability"] == 0.1
    assert not v4["episodic_life"] and not v4["reward_clip"]  # done by the adapter


def test_a_value_envpool_refuses_is_one_line(tmp_path):
    proc = run_cli(["algo=ppo", "env=cartpole", "env.vectorization=envpool",
                    "+env.kwargs.max_episode_steps=100000000000", *FAST], tmp_path)
    line = error_line(proc)
    assert "EnvPool cannot make CartPole-v1" in line and "sync, async" in line, line


@pytest.mark.parametrize("backend", ["sync", "envpool"])
def test_an_episode_that_ends_on_its_last_step_is_terminated_and_truncated(backend):
    """As gymnasium's TimeLimit says it: terminated where the final state is terminal, also on
    the last allowed step (EnvPool's own limit said truncated only: the feeders bootstrapped
    from a fallen pole), and truncated at the limit."""
    limit = 12
    envs = make_vec_env("CartPole-v1", 16, {"max_episode_steps": limit}, vectorization=backend,
                        threads=1)
    envs.reset(seed=0)
    envs.action_space.seed(0)
    lengths = np.zeros(16, int)
    both = 0
    for _ in range(400):
        _, _, terminated, truncated, info = envs.step(envs.action_space.sample())
        lengths += 1
        for i in np.flatnonzero(terminated | truncated):
            x, _, theta, _ = info["final_obs"][i]
            assert terminated[i] == (abs(x) > 2.4 or abs(theta) > 12 * 2 * np.pi / 360)
            assert truncated[i] == (lengths[i] == limit)
            both += bool(terminated[i] and truncated[i])
        lengths[terminated | truncated] = 0
    assert both >= 10  # random actions topple the pole on step 12 often enough
    envs.close()


@pytest.mark.parametrize("backend", ["sync", "envpool"])
def test_max_episode_steps_as_gymnasium_make_takes_it(backend):
    """-1 is no TimeLimit (EnvPool took it as a limit of -1: every step truncated); None is
    the registered limit (Pendulum's 200)."""
    for steps, ends_at in ((-1, None), (None, 200), (50, 50)):
        envs = make_vec_env("Pendulum-v1", 2, {"max_episode_steps": steps},
                            vectorization=backend, threads=1)
        envs.reset(seed=0)
        for t in range(1, 251):
            _, _, terminated, truncated, _ = envs.step(np.zeros((2, 1), np.float32))
            assert not terminated.any() and truncated.all() == (t == ends_at), (steps, t)
            if t == ends_at:
                break
        envs.close()


def test_atari_episode_length_in_kwargs_counts_frames():
    """env.kwargs.max_episode_steps on a game is in frames, as gymnasium's TimeLimit around
    the game counts them; EnvPool's limit is in agent steps (EnvPool replaced it with the id's
    27000 before)."""
    from rl_runner.config import atari_options

    settings = envpool_env.pool_kwargs("BreakoutNoFrameskip-v4", {"max_episode_steps": 400},
                                       atari_options({}))
    assert settings["max_episode_steps"] == 100
    # -1 drops gymnasium's TimeLimit, not ALE's own cap of 108000 frames; nor does a longer one
    for frames in (-1, 400_000):
        capped = envpool_env.pool_kwargs("ALE/Breakout-v5", {"max_episode_steps": frames},
                                         atari_options({}))
        assert capped["max_episode_steps"] == 27000
    registered = envpool_env.pool_kwargs("ALE/Breakout-v5", {"max_episode_steps": None},
                                         atari_options({}))
    assert registered["max_episode_steps"] == 27000


def test_atari_without_no_ops_takes_sync(caplog):
    """env.atari.noop_max=0 crashed EnvPool's Atari (a segfault, no line): envpool refuses it
    in one line, auto takes sync."""
    pytest.importorskip("ale_py")
    from rl_runner.config import atari_options

    atari = atari_options({"noop_max": 0})
    with pytest.raises(UserError, match="noop_max >= 1.*backends that work for it: sync"):
        make_vec_env("BreakoutNoFrameskip-v4", 1, vectorization="envpool", atari=atari)
    caplog.set_level("INFO", logger="rl_runner")
    envs = make_vec_env("BreakoutNoFrameskip-v4", 1, vectorization="auto", atari=atari)
    assert envs.backend == "sync" and "noop_max" in caplog.text
    envs.close()


def test_atari_a_life_lost_on_the_last_step_is_terminated():
    """As the gymnasium stack's EpisodicLife says it, also where the time limit ends the game in
    that step (it said truncated only: a bootstrap from a lost life)."""
    pytest.importorskip("ale_py")
    from rl_runner.config import atari_options

    actions = np.random.default_rng(0).integers(0, 4, size=(3000, 1))

    def first_end(frames):
        envs = make_vec_env("BreakoutNoFrameskip-v4", 1, {"max_episode_steps": frames},
                            vectorization="envpool", atari=atari_options({}), training=True,
                            threads=1)
        envs.reset(seed=0)
        for t, a in enumerate(actions, 1):
            _, _, terminated, truncated, _ = envs.step(a)
            if terminated[0] or truncated[0]:
                envs.close()
                return t, bool(terminated[0]), bool(truncated[0])
        raise AssertionError("no episode ended")

    t, terminated, truncated = first_end(-1)
    assert terminated and not truncated  # a lost life
    assert first_end(4 * t) == (t, True, True)  # the limit: that step's agent steps x frame_skip
