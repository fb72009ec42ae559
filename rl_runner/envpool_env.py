"""env.vectorization=envpool: EnvPool (pip package `envpool`) steps the envs in C++ threads.

EnvPoolVectorEnv gives the feeders what gymnasium's SyncVectorEnv gives them with
AutoresetMode.SAME_STEP: an episode that ends is reset in the same step, its final observation
in info["final_obs"], terminated and truncated apart. EnvPool itself resets an env on the step
after its episode ended (the action is ignored then); here the ended envs are reset at once
(EnvPool's reset of a subset of envs), so no step is spent on it. The time limit is kept here
too, from EnvPool's step count: an episode that ends on its last allowed step is terminated and
truncated, as gymnasium's TimeLimit says, where EnvPool's own limit says truncated only (and
the feeders would bootstrap from a final state). max_episode_steps=-1 is no limit, as in
gymnasium.make.

The spaces are gymnasium's own (the Evaluator scores on gymnasium's env, and checkpoints fit
either backend); EnvPool's must have the same shapes. Env i is seeded with seed + i.

Atari: EnvPool's own preprocessing does the frame work (no-op starts, frame skip with the max of
the last two frames, 84x84 grey, the frame stack, FIRE after a reset); a lost life ending the
training episode, reward clipping and the whole-game score are done here, from EnvPool's lives
counter and its unclipped rewards, because EnvPool's reset of an env restarts its game.
"""
from __future__ import annotations

import functools
import importlib
import time
import warnings
from typing import Any

import gymnasium as gym
import numpy as np

from rl_runner.atari import register_ale
from rl_runner.errors import UserError, one_line

BACKENDS = ("sync", "async", "envpool", "auto")
# EnvPool's episode length where rl-runner keeps none (the pool's limit is one step past ours)
NEVER = 2**31 - 1
# EnvPool's own settings of the pool, not of the env: never taken from env.kwargs
POOL_KEYS = {"num_envs", "batch_size", "num_threads", "max_num_players", "thread_affinity_offset",
             "base_path", "seed", "env_seed", "gym_reset_return_info"}


@functools.lru_cache(maxsize=1)
def installed() -> bool:
    try:
        importlib.import_module("envpool")
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=1)
def _all_ids() -> frozenset[str]:
    import envpool

    return frozenset(envpool.list_all_envs())


def atari_task(env_id: str) -> tuple[str, dict] | None:
    """EnvPool's Atari id for an ale-py id (BreakoutNoFrameskip-v4, ALE/Breakout-v5: Breakout-v5)
    and the ale-py settings it must keep (sticky actions, action set, episode length in frames)."""
    spec = gym.spec(env_id)
    game = spec.kwargs.get("game")
    if not isinstance(game, str):
        return None
    name = "".join(part.capitalize() for part in game.split("_")) + "-v5"
    settings = {"repeat_action_probability": float(spec.kwargs.get("repeat_action_probability",
                                                                   0.0)),
                "full_action_space": bool(spec.kwargs.get("full_action_space", False))}
    cap = spec.kwargs.get("max_num_frames_per_episode")  # ALE ends a game there itself
    frames = spec.max_episode_steps or cap
    return name, {**settings, "frames": frames, "cap": cap if cap and cap > 0 else None}


def twin(env_id: str, atari: dict | None) -> str | None:
    """The EnvPool id that steps `env_id` (a registered gymnasium id), or None: a user's own env
    (module:Id), an id EnvPool lacks, an Atari game without env.atari (EnvPool preprocesses)."""
    if ":" in env_id or not installed():
        return None
    if env_id not in gym.registry:  # ale-py's ids are registered on first use
        if not (register_ale() and env_id in gym.registry):
            return None
    if atari is not None:
        task = atari_task(env_id)
        return task[0] if task is not None and task[0] in _all_ids() else None
    if str(gym.spec(env_id).entry_point).startswith("ale_py"):
        return None  # raw ALE frames: EnvPool always preprocesses
    return env_id if env_id in _all_ids() else None


def resolve(vectorization: str, env_id: str, atari: dict | None) -> str:
    """The backend to build: auto is envpool where it is installed and has the id, else sync;
    envpool where it cannot step `env_id` is one line naming the backends that can."""
    if vectorization not in BACKENDS:
        raise UserError(f"env.vectorization={vectorization!r} is not known; allowed: "
                        f"{', '.join(BACKENDS)}")
    if vectorization not in ("auto", "envpool"):
        return vectorization
    if twin(env_id, atari) is not None:
        return "envpool"
    if vectorization == "auto":
        return "sync"
    if not installed():
        why = "envpool is not installed here (pip install 'rl-runner[envpool]')"
    elif atari is None and twin(env_id, {}) is not None:  # raw frames of a game EnvPool has
        why = (f"EnvPool steps {env_id} only with its Atari preprocessing, which env=atari "
               f"env.id={env_id} asks for")
    else:
        why = f"EnvPool has no twin of env.id={env_id}"
    raise UserError(f"env.vectorization=envpool: {why}; backends that work for it: sync, async")


class Unfit(UserError):
    """EnvPool has the id but cannot step it as configured; `reason` says why, without the
    advice around it (env.vectorization=auto takes sync instead and logs the reason)."""

    def __init__(self, reason: str, works: str = "sync, async"):
        super().__init__(f"env.vectorization=envpool: {reason}; backends that work for it: "
                         f"{works}")
        self.reason = reason


def pool_kwargs(env_id: str, kwargs: dict, atari: dict | None) -> dict:
    """envpool.make's settings for `env_id`: env.kwargs where EnvPool has the same key, the
    episode length in agent steps (max_episode_steps: env.kwargs' or gymnasium's registration;
    None for none), env.atari's preprocessing."""
    import envpool

    name = twin(env_id, atari)
    known = set(envpool.make_spec(name).config._fields) - POOL_KEYS
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise Unfit(f"env.kwargs {unknown} have no EnvPool equivalent for {env_id} (EnvPool "
                    f"takes: {', '.join(sorted(known))})")
    out = dict(kwargs)
    if atari is None:
        if "max_episode_steps" in known:
            out["max_episode_steps"] = episode_limit(out.get("max_episode_steps"),
                                                     gym.spec(env_id).max_episode_steps)
        return out
    if atari["noop_max"] < 1:  # envpool 1.2.5's Atari crashed (SIGSEGV) at its first reset
        raise Unfit(f"EnvPool's Atari takes env.atari.noop_max >= 1, not {atari['noop_max']}")
    _, settings = atari_task(env_id)
    # env.kwargs.max_episode_steps counts frames, as gymnasium's TimeLimit around the game does;
    # ALE's own cap stays where the TimeLimit is longer or absent (-1)
    frames = episode_limit(out.pop("max_episode_steps", None), settings.pop("frames"))
    cap = settings.pop("cap")
    if cap is not None:
        frames = cap if frames is None else min(frames, cap)
    out = {**settings, **out}  # the id's sticky actions and action set, unless env.kwargs say
    out.update(noop_max=atari["noop_max"], frame_skip=atari["frame_skip"],
               img_height=atari["screen_size"], img_width=atari["screen_size"],
               gray_scale=atari["grayscale"], stack_num=atari["frame_stack"],
               use_fire_reset=atari["fire_reset"], episodic_life=False, reward_clip=False,
               max_episode_steps=None if frames is None else max(1, frames // atari["frame_skip"]))
    return out


def episode_limit(steps, registered: int | None) -> int | None:
    """The episode length gymnasium.make gives for max_episode_steps=`steps`: the registered one
    where it is None, none (None) where it is -1."""
    if steps is None:
        steps = registered
    return None if steps is None or steps == -1 else int(steps)


def quietly(fn, *args):
    """fn(*args) without the UserWarnings gymnasium gives about EnvPool's Box spaces (float64
    bounds cast to float32): rl-runner uses gymnasium's own spaces."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args)


class EnvPoolVectorEnv(gym.vector.VectorEnv):
    """n EnvPool envs behind gymnasium's VectorEnv API with SAME_STEP autoreset (module doc)."""

    def __init__(self, env_id: str, n_envs: int, kwargs: dict, atari: dict | None,
                 training: bool, observation_space: gym.Space, action_space: gym.Space,
                 threads: int):
        self.env_id, self.num_envs, self.threads = env_id, n_envs, max(1, min(threads, n_envs))
        self.name = twin(env_id, atari)
        self.settings = pool_kwargs(env_id, kwargs, atari)
        # the time limit is kept here (step_wait), as gymnasium's TimeLimit keeps it; EnvPool's
        # own says truncated and not terminated where an episode ends on its last step
        self.limit = self.settings.get("max_episode_steps")
        if "max_episode_steps" in self.settings:
            self.settings["max_episode_steps"] = NEVER if self.limit is None else self.limit + 1
        self.single_observation_space, self.single_action_space = observation_space, action_space
        self.observation_space = gym.vector.utils.batch_space(observation_space, n_envs)
        self.action_space = gym.vector.utils.batch_space(action_space, n_envs)
        self.atari = atari
        self.life_ends = atari is not None and training and atari["episodic_life"]
        self.clip = atari is not None and training and atari["clip_reward"]
        self.whole_games = atari is not None  # envs.game_ends reads final_info["episode"]
        self.metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}
        self.pool, self.seed_used = None, None
        try:
            quietly(self._build, 0)
            quietly(self._check_spaces)
            if self.threads > 1:
                quietly(self._pick_threads)
        except BaseException:  # a refused pool's C++ threads go now, not at garbage collection
            self.close()
            raise

    def _build(self, seed: int) -> None:
        import envpool

        if self.pool is not None:
            self.pool.close()
        try:
            self.pool = envpool.make(self.name, env_type="gymnasium", num_envs=self.num_envs,
                                     num_threads=self.threads, seed=int(seed),
                                     **self.settings)
        except Exception as e:  # a value gymnasium took and EnvPool does not
            raise Unfit(f"EnvPool cannot make {self.name} with {self.settings} "
                        f"({type(e).__name__}: {one_line(e, 200)})") from None
        self.seed_used = seed
        self.act_dtype = self.pool.action_space.dtype
        self.lives = np.zeros(self.num_envs, np.int64)
        self.game_return = np.zeros(self.num_envs, np.float64)
        self.game_length = np.zeros(self.num_envs, np.int64)

    def _pick_threads(self, steps: int = 200) -> None:
        """One thread or `threads`, whichever steps these envs faster: handing a step to other
        threads costs more than it saves for an env as light as CartPole (one thread: 153k env
        steps/s, two: 105k, 8 envs), not for LunarLander (43.5k and 56.6k, 16 envs)."""
        self.action_space.seed(0)
        actions = [np.asarray(self.action_space.sample(), self.act_dtype) for _ in range(steps)]
        rates = {1: 0.0, self.threads: 0.0}
        for threads in 2 * list(rates):  # alternating, the better of two tries each
            self.threads = threads
            self._build(0)
            self.pool.reset()
            start = time.perf_counter()
            for a in actions:
                self.pool.step(a)
            rates[threads] = max(rates[threads], steps / (time.perf_counter() - start))
        self.threads = max(rates, key=rates.get)
        self._build(0)

    def _check_spaces(self) -> None:
        got, want = self.pool.observation_space, self.single_observation_space
        if got.shape != want.shape:
            raise Unfit(f"EnvPool's {self.name} observes {got.shape}, gymnasium's "
                        f"{self.env_id} {want.shape}")
        a, b = self.pool.action_space, self.single_action_space
        if type(a) is not type(b) or getattr(a, "n", None) != getattr(b, "n", None) or \
                a.shape != b.shape:
            raise Unfit(f"EnvPool's {self.name} acts in {a}, gymnasium's {self.env_id} in {b}")

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """A fresh start of every env; env i seeded with seed + i (a new seed builds the pool
        again: EnvPool takes seeds only when it is made)."""
        if seed is not None and seed != self.seed_used:
            quietly(self._build, seed)
        obs, info = quietly(self.pool.reset)
        self.lives[:] = info["lives"] if self.atari is not None else 0
        self.game_return[:] = 0.0
        self.game_length[:] = 0
        return obs, {}

    def step(self, actions):
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions) -> None:
        """Hand the actions to EnvPool's threads and return at once; step_wait takes the results
        (gymnasium's AsyncVectorEnv pair): the caller works while the envs step."""
        self.pool.send(np.asarray(actions, self.act_dtype))

    def step_wait(self):
        obs, rewards, terminated, truncated, info = self.pool.recv()
        if self.limit is not None:  # both flags where the last allowed step ends the episode
            truncated = truncated | (info["elapsed_step"] >= self.limit)
        rewards = np.asarray(rewards, np.float64)
        out: dict[str, Any] = {}
        over = terminated | truncated  # EnvPool's episode (an Atari game) ended: reset at once
        if self.atari is not None:  # a lost life may end a training episode, not the game
            rewards, terminated = self._atari(rewards, terminated, over, info, out)
        done = terminated | truncated
        if done.any():
            final = np.empty(self.num_envs, object)
            for i in np.flatnonzero(done):
                final[i] = obs[i].copy()
            out["final_obs"], out["_final_obs"] = final, done
            if over.any():
                ids = np.flatnonzero(over)
                first, reset_info = quietly(self.pool.reset, ids.astype(np.int32))
                obs = np.array(obs)  # EnvPool's arrays may be reused: ours to write
                obs[ids] = first
                if self.atari is not None:
                    self.lives[ids] = reset_info["lives"]
        return obs, rewards, terminated, truncated, out

    def _atari(self, rewards, terminated, game_over, info, out):
        """Whole-game score and length; lost lives end training episodes; clipped rewards."""
        self.game_return += rewards
        self.game_length += 1
        lives = np.asarray(info["lives"], np.int64)
        if game_over.any():
            ids = np.flatnonzero(game_over)
            out["final_info"] = {"episode": {"r": self.game_return.copy(),
                                             "l": self.game_length.copy()},
                                 "_episode": game_over.copy()}
            self.game_return[ids] = 0.0
            self.game_length[ids] = 0
        if self.life_ends:  # also where the time limit ends the game in that step, as the
            terminated = terminated | (lives < self.lives)  # gymnasium stack's EpisodicLife
        self.lives = lives
        return (np.sign(rewards) if self.clip else rewards), terminated

    def close(self, **kwargs) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None

