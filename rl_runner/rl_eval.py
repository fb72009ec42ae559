"""`rl-eval run=<run dir>`: evaluate a checkpoint, write eval.json, optionally record mp4s."""
from __future__ import annotations

import contextlib
import datetime
import json
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from rl_runner import fileio
from rl_runner.envs import make_one
from rl_runner.errors import UserError, one_line
from rl_runner.evaluation import Evaluator
from rl_runner.options import Option, run_tool
from rl_runner.policy import Policy, load_policy

SUMMARY = ("Evaluate a trained policy: N episodes on fresh envs, mean and std of the return, "
           "written to <run>/eval.json (earlier results kept under 'previous').")
OPTIONS = {
    "run": Option(None, str, "the run directory, e.g. outputs/2026-12-03/10-00-00_ppo_cartpole_s0"),
    "checkpoint": Option("best", str, "best (last.pt where no best.pt), last, or a .pt file "
                                      "inside the run"),
    "episodes": Option(20, int, "episodes to run"),
    "deterministic": Option(None, bool | None, "true: act with the policy's mode; false: sample "
                            "actions; null: as the run evaluated (trainer.eval_deterministic)"),
    "seed": Option(None, int | None, "seed of the first episode; null: the run's seed + 10000, "
                                     "the seeds of its own evaluations"),
    "video": Option(False, bool, "record every episode as an mp4 in <run>/videos/ (needs the "
                                 "video extra: pip install -c constraints.txt -e '.[video]')"),
}


def evaluate(opts: dict[str, Any]) -> dict[str, Any]:
    if opts["run"] is None:
        raise UserError("run=<run directory> is required")
    if opts["episodes"] <= 0:
        raise UserError(f"episodes={opts['episodes']} must be positive")
    if opts["seed"] is not None and opts["seed"] < 0:
        raise UserError(f"seed={opts['seed']} must not be negative")
    run = Path(opts["run"])
    policy = load_policy(run, opts["checkpoint"])
    fileio.check_writable(run)  # for eval.json, before the episodes (videos/: in record)
    seed = policy.config.seed + 10_000 if opts["seed"] is None else opts["seed"]
    deterministic = opts["deterministic"]
    if deterministic is None:  # configs saved before the key: the mode, as runs evaluated then
        deterministic = bool(policy.config.trainer.get("eval_deterministic", True))
    if opts["video"]:
        result, videos = record(policy, run / "videos", opts["episodes"], seed, deterministic)
    else:
        evaluator = Evaluator(policy.env_id, opts["episodes"], seed, **policy.env_options)
        try:
            result = evaluator.run(lambda obs: policy.act(obs, deterministic))
        finally:
            evaluator.close()
        videos = []
    result = {"env_id": policy.env_id, "checkpoint": str(policy.checkpoint),
              "checkpoint_env_steps": policy.env_steps, "deterministic": deterministic,
              "seed": seed, **result, "videos": videos,
              "time": datetime.datetime.now().isoformat(timespec="seconds")}
    write_eval_json(run / "eval.json", result)
    print(f"{policy.env_id}: return {result['return_mean']:.2f} +- {result['return_std']:.2f} "
          f"over {result['episodes']} episodes ({policy.checkpoint.name} after "
          f"{policy.env_steps} training steps); written to {run / 'eval.json'}")
    return result


def write_eval_json(path: Path, result: dict) -> None:
    """The latest result at the top level; earlier ones move, whole, into 'previous'."""
    previous: list = []
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"{path} exists but is not JSON; move it away first") from None
        previous = [{k: v for k, v in old.items() if k != "previous"}, *old.get("previous", [])]
    fileio.write_atomic(path, json.dumps({**result, "previous": previous}, indent=2) + "\n")


def record(policy: Policy, folder: Path, episodes: int, seed: int,
           deterministic: bool) -> tuple[dict, list[str]]:
    """Episodes one after another in one rendering env, episode i seeded seed + i (as the
    evaluator seeds its i-th env, so up to 20 episodes give the numbers of a run without video).
    On Atari the video shows the game in colour, whole games, one frame per agent step played
    at the game's speed (RecordVideo sits right above AtariPreprocessing)."""
    from rl_runner.atari import ATARI_FPS
    from rl_runner.config import atari_options

    options = policy.env_options
    atari = atari_options(options["atari"])
    fps = max(1, round(ATARI_FPS / atari["frame_skip"])) if atari else None
    prefix = f"{policy.checkpoint.stem}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    kwargs = {**options["kwargs"], "render_mode": "rgb_array"}
    try:
        env = make_one(policy.env_id, kwargs, options["atari"], training=False,
                       record=lambda base: video_wrapper(base, policy.env_id, folder, prefix, fps))
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{policy.env_id} cannot render rgb_array frames for video "
                        f"({type(e).__name__}: {one_line(e, 200)}){render_hint(policy.env_id)}") \
            from None
    returns, lengths = [], []
    with fileio.writing(folder), contextlib.closing(env):  # mp4s are written as episodes end
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            total, steps, done = 0.0, 0, False
            while not done:
                action = policy.act(np.asarray(obs)[None], deterministic)[0]
                obs, reward, terminated, truncated, _ = env.step(action)
                total, steps, done = total + float(reward), steps + 1, terminated or truncated
            returns.append(total)
            lengths.append(steps)
    videos = sorted(str(p) for p in folder.glob(f"{prefix}-episode-*.mp4"))
    return ({"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
             "length_mean": float(np.mean(lengths)), "episodes": episodes}, videos)


def video_wrapper(env: gym.Env, env_id: str, folder: Path, prefix: str,
                  fps: int | None) -> gym.Env:
    """RecordVideo on `env`, which must render rgb_array frames; every episode an mp4."""
    from gymnasium.error import DependencyNotInstalled

    if "rgb_array" not in env.metadata.get("render_modes", []):
        env.close()
        raise UserError(f"{env_id} cannot render rgb_array frames for video; its render "
                        f"modes: {', '.join(env.metadata.get('render_modes', [])) or 'none'}")
    try:  # MuJoCo makes its OpenGL context at the first frame: fail here, not in episode 1
        env.reset(seed=0)
        env.render()
    except Exception as e:
        env.close()
        raise UserError(f"{env_id} cannot render rgb_array frames for video "
                        f"({type(e).__name__}: {one_line(e, 200)}){render_hint(env_id)}") \
            from None
    try:
        with fileio.writing(folder):
            env = gym.wrappers.RecordVideo(env, str(folder), episode_trigger=lambda _: True,
                                           name_prefix=prefix, disable_logger=True,
                                           fps=fps)  # makes folder
            fileio.check_writable(folder)  # before the episodes, not after them
    except DependencyNotInstalled:
        env.close()
        raise UserError("video=true needs moviepy: pip install -c constraints.txt -e "
                        "'.[video]'") from None
    except UserError:
        env.close()
        raise
    return env


def render_hint(env_id: str) -> str:
    """MuJoCo draws through OpenGL: on a machine without a display it needs MUJOCO_GL."""
    entry = str(gym.spec(env_id.split(":")[-1]).entry_point)
    if entry.startswith("gymnasium.envs.mujoco") and not os.environ.get("MUJOCO_GL"):
        return ("; without a display MuJoCo renders with MUJOCO_GL=egl (a GPU's EGL) or "
                "MUJOCO_GL=osmesa (CPU, needs libosmesa6)")
    return ""


def main(argv: list[str] | None = None) -> None:
    run_tool("rl-eval", SUMMARY, OPTIONS, evaluate, argv)


if __name__ == "__main__":
    main()
