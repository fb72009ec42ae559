"""A run's state in checkpoints/last.pt and best.pt: what a Trainer saves, and how a resume checks
every part of it before loading any (one line naming what does not fit)."""
from __future__ import annotations

import logging
import math

from omegaconf import OmegaConf

from rl_runner.checkpoint import (cuda_rng_misfit, misfit, nonfinite_paths, portable_rng,
                                  rng_state, save_checkpoint, set_rng_state)
from rl_runner.envpool_env import EnvPoolVectorEnv
from rl_runner.envstate import env_state, restore_env_state
from rl_runner.errors import UserError
from rl_runner.results import recorded_status

log = logging.getLogger("rl_runner")
COUNTERS = ("env_steps", "next_eval", "next_checkpoint", "best_eval", "last_eval",
            "last_eval_step")


def next_multiple(steps: int, every: int) -> int:
    """The first multiple of `every` after `steps`."""
    return (steps // every + 1) * every


def counters(t, wall: float) -> dict:
    """The trainer's counters as a checkpoint keeps them."""
    return {**{k: getattr(t, k) for k in COUNTERS}, "grad_steps": t.algo.grad_steps,
            "wall_seconds": wall, "recent_returns": list(t.recent_returns)}


def save(t, name: str, wall: float) -> None:
    """checkpoints/<name> of trainer `t`, never with a non-finite parameter; best.pt (a policy to
    evaluate) goes without the replay buffer, and last.pt carries it when asked."""
    state = {
        "algo": t.algo.state_dict(),
        "counters": counters(t, wall),
        "rng": rng_state(),
        "env": {"state": env_state(t.envs), "action_space_rng":
                t.envs.action_space.np_random.bit_generator.state},
        "feeder": t.feeder.state_dict(),
        "config": OmegaConf.to_container(t.cfg, resolve=True),
        "dataset": t.feeder.dataset,
        "logger": t.logger.state_dict(),
    }
    bad = nonfinite_paths(state["algo"])
    if bad:
        raise UserError(f"the algorithm's state became NaN/Inf ({', '.join(bad[:3])}) by env "
                        f"step {t.env_steps}; stopped before saving {name}, {kept(t)}")
    buffer = t.feeder.buffer_state() if name == "last.pt" and t.tcfg.save_replay_buffer else None
    if buffer is not None:
        state["replay_buffer"] = buffer
    save_checkpoint(t.ckpt_dir / name, state)
    if name == "last.pt":
        t.saved_step = t.env_steps
        t.logger.commit(t.env_steps)


def kept(t) -> str:
    """What is left on disk after a non-finite stop."""
    if t.saved_step is None:
        return "no checkpoint had been saved yet"
    return f"checkpoints/last.pt keeps the last good state (env step {t.saved_step})"


def check_dataset(t, ckpt: dict | None) -> None:
    """On resume, the rows must be those last.pt was trained on; then say which they are."""
    trained_on = (ckpt or {}).get("dataset")
    data = t.feeder.dataset
    if data and trained_on and trained_on.get("sha256") != data["sha256"]:
        raise UserError(f"resume: the dataset {data['path']} is not the one "
                        f"{t.ckpt_dir / 'last.pt'} was trained on (its rows changed: sha256 "
                        f"{data['sha256'][:12]}, trained on {str(trained_on.get('sha256'))[:12]}"
                        "); put the original back or start a new run")
    if data:
        log.info("dataset %s: %s", data["path"], data["rows"])


def check_fits(t, ckpt: dict) -> None:
    """The checkpoint's parts have the structure of this run's own (keys, types, shapes), and
    its counters are in range, before any of it is loaded. The CUDA generators' part of the rng
    state is the machine's, not the run's: a GPU run resumes on a CPU-only machine and the other
    way round (only its form is checked)."""
    last = t.ckpt_dir / "last.pt"
    parts = {"algo": t.algo.state_dict(), "feeder": t.feeder.state_dict(),
             "counters": counters(t, 0.0), "rng": portable_rng(rng_state()),
             "env": {"state": None, "action_space_rng":
                     t.envs.action_space.np_random.bit_generator.state}}
    for key, reference in parts.items():
        got = ckpt.get(key, {} if key != "env" else None)
        where = misfit(reference, portable_rng(got) if key == "rng" else got, f"{key}.")
        if where is not None or key not in ckpt:
            raise UserError(f"{last} does not fit this run: {where or key + ' is missing'}")
    bad = cuda_rng_misfit(ckpt["rng"]) or counters_misfit(ckpt["counters"]) or \
        logger_misfit(ckpt.get("logger")) or \
        budget_misfit(ckpt["counters"]["env_steps"], t.step_size, t.budget) or \
        next((f"algo.{p} is NaN/Inf" for p in nonfinite_paths(ckpt["algo"])), None)
    if bad:
        raise UserError(f"{last} does not fit this run: {bad}")
    c = ckpt["counters"]
    if c["env_steps"] == t.budget and c["last_eval_step"] == t.budget and \
            recorded_status(t.run_dir) == "completed":  # nothing left to do
        raise UserError(f"resume={t.run_dir}: the run completed its whole budget of "
                        f"{t.budget} {t.algo.step_unit}; raise trainer.total_steps to train on")
    saved_envs = ckpt["env"]["state"]
    if saved_envs is not None and not isinstance(saved_envs, (list, bytes)):
        raise UserError(f"{last} does not fit this run: its env state is a "
                        f"{type(saved_envs).__name__}")


def restore(t, ckpt: dict) -> None:
    """Load a checked last.pt into trainer `t`: algorithm, counters, RNGs, feeder, env state (or
    fresh episodes, where the env state could not be saved as plain data)."""
    check_fits(t, ckpt)
    last = t.ckpt_dir / "last.pt"
    try:
        t.algo.load_state_dict(ckpt["algo"])
        c = ckpt["counters"]
        for key in COUNTERS:
            setattr(t, key, c[key])
        t.wall_before, t.saved_step = c["wall_seconds"], t.env_steps
        t.next_log = next_multiple(t.env_steps, t.log_every)
        t.recent_returns.extend(c["recent_returns"])
        set_rng_state(ckpt["rng"])
        t.envs.action_space.np_random.bit_generator.state = ckpt["env"]["action_space_rng"]
        t.feeder.load_state_dict(ckpt["feeder"])
        t.feeder.load_buffer_state(ckpt.get("replay_buffer"), str(last))
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise UserError(f"{last} does not fit this run's config ({type(e).__name__}: {e})") \
            from None
    saved_envs = ckpt["env"]["state"]  # format 1 held pickled bytes: never unpickled
    if t.algo.family == "offline":  # no env is stepped while learning: nothing to restore
        pass
    elif isinstance(saved_envs, list):
        try:
            restore_env_state(t.envs, saved_envs)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise UserError(f"{last}: its env state does not fit this run's envs ({e})") from None
    else:
        t.feeder.restart_episodes(t.cfg.seed + t.env_steps)
        why = ("was saved by an earlier rl-runner, whose env state is not loaded (it was a "
               "pickle)" if isinstance(saved_envs, bytes) else
               "holds no env state (EnvPool cannot save its envs mid-episode; a new run with "
               "env.vectorization=sync resumes exactly where the env allows it, not Box2D's "
               "or MuJoCo's)"
               if isinstance(t.envs, EnvPoolVectorEnv) else
               f"holds no env state ({t.cfg.env.id} keeps it in objects that cannot be saved "
               "as plain data)")
        log.warning("%s %s: the episodes in progress restart on resume, so numbers will differ "
                    "from an uninterrupted run", last, why)
    log.info("resumed from step %d", t.env_steps)


def counters_misfit(c: dict) -> str | None:
    """What is wrong with a checkpoint's trainer counters (types fit already: misfit), or None:
    step counts in range, times and returns finite, at most 20 recent returns."""
    for key in ("env_steps", "grad_steps", "next_eval", "next_checkpoint", "last_eval_step"):
        if not -1 <= c[key] < 2**53:
            return f"counters.{key}={c[key]} is out of range"
    if not (isinstance(c["wall_seconds"], float) and 0 <= c["wall_seconds"] < 1e12):
        return f"counters.wall_seconds={c['wall_seconds']!r:.40} is not a time in seconds"
    if not (isinstance(c["best_eval"], float) and c["best_eval"] < math.inf):
        return f"counters.best_eval={c['best_eval']!r:.40} is not a return"
    recent = c["recent_returns"]
    if len(recent) > 20 or not all(isinstance(r, float) and math.isfinite(r) for r in recent):
        return "counters.recent_returns is not a list of up to 20 finite returns"
    ev = c["last_eval"]
    if ev is not None and not (isinstance(ev, dict) and set(ev) >= {"return_mean", "return_std",
                                                                      "length_mean", "episodes"}
                               and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                       for v in ev.values())):  # an inf eval is a record too
        return "counters.last_eval is not an evaluation's result"
    return None


def budget_misfit(steps: int, step_size: int, budget: int) -> str | None:
    """A run is always a whole number of updates into its budget."""
    if steps % step_size:
        return f"counters.env_steps={steps} is not a whole number of updates of {step_size} steps"
    if steps > budget:
        return (f"counters.env_steps={steps} is beyond this run's budget of {budget} steps "
                "(raise trainer.total_steps to train on)")
    return None


def logger_misfit(state) -> str | None:
    """The loggers' saved state (a run id per backend): plain strings and numbers, or absent."""
    if state is None:
        return None
    if not (isinstance(state, dict) and all(
            isinstance(k, str) and isinstance(v, dict) and all(
                isinstance(kk, str) and isinstance(vv, str) for kk, vv in v.items())
            for k, v in state.items())):
        return "logger is not a dict of backend states (names to strings)"
    return None
