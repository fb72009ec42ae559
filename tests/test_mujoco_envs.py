"""MuJoCo envs (env=hopper|halfcheetah|walker2d|ant|humanoid): the configs compose and make their
env; without mujoco, one line names the extra; rl-eval records a run as an mp4."""
from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

from rl_runner.envs import env_options, make_vec_env
from tests.conftest import compose

pytest.importorskip("mujoco")
ENVS = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5",
        "ant": "Ant-v5", "humanoid": "Humanoid-v5"}


@pytest.mark.parametrize("name", ENVS)
def test_the_config_composes_and_makes_its_env(name):
    cfg = compose([f"env={name}"])
    assert cfg.env.id == ENVS[name] and cfg.env.get("atari") is None
    envs = make_vec_env(cfg.env.id, 1, training=True, **env_options(cfg.env))
    assert isinstance(envs.single_action_space, gym.spaces.Box)
    assert envs.single_observation_space.dtype == np.float64  # vectors, not images
    obs, _ = envs.reset(seed=0)
    obs, reward, *_ = envs.step(envs.action_space.sample())
    assert np.isfinite(obs).all() and np.isfinite(reward).all()
    envs.close()


def test_without_mujoco_one_line_names_the_extra():
    code = ("import sys; sys.modules['mujoco'] = None\n"
            "from rl_runner.envs import make_vec_env\n"
            "from rl_runner.errors import UserError\n"
            "try:\n    make_vec_env('Hopper-v5', 1)\n"
            "except UserError as e:\n    print(e)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "env.id=Hopper-v5 needs the mujoco extra" in proc.stdout
    assert "pip install 'rl-runner[mujoco]'" in proc.stdout



def test_an_import_error_with_mujoco_installed_gives_its_own_words():
    """Pusher-v4 wants mujoco < 3, which the extra does not install: its ImportError says so,
    where 'needs the mujoco extra, not installed here' sent the user to reinstall it."""
    proc = subprocess.run([sys.executable, "-c", (
        "from rl_runner.envs import make_vec_env\n"
        "from rl_runner.errors import UserError\n"
        "try:\n    make_vec_env('Pusher-v4', 1)\n    print('made')\n"
        "except UserError as e:\n    print(e)")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    if proc.stdout.strip() == "made":  # a gymnasium and mujoco where Pusher-v4 still runs
        pytest.skip("Pusher-v4 runs with this mujoco")
    assert "mujoco<3" in proc.stdout and "needs the mujoco extra" not in proc.stdout


def gl_backend() -> str:
    """osmesa where its library is installed (CPU rendering), else egl (Mesa's EGL renders on
    a CPU too where there is no GPU; hosts differ in which one they have)."""
    return "osmesa" if ctypes.util.find_library("OSMesa") else "egl"


def test_rl_eval_records_a_hopper_run(tmp_path):
    """Rendering needs OpenGL: MUJOCO_GL=osmesa (libosmesa6) or egl. Without either, rl-eval
    says so in one line instead."""
    pytest.importorskip("moviepy")
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", gl_backend())}
    run = tmp_path / "run"
    train = subprocess.run(
        [sys.executable, "-m", "rl_runner.cli", "algo=ppo", "env=hopper", "trainer.total_steps=64",
         "algo.n_steps=32", "algo.batch_size=32", "trainer.eval_episodes=1",
         "trainer.progress=false", "+env.kwargs.width=96", "+env.kwargs.height=96",  # fast
         f"hydra.run.dir={run}"],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    proc = subprocess.run([sys.executable, "-m", "rl_runner.rl_eval", f"run={run}", "episodes=1",
                           "video=true"], capture_output=True, text=True, timeout=300, env=env)
    if proc.returncode == 2:  # no OpenGL library for MUJOCO_GL here
        assert "Hopper-v5 cannot render rgb_array frames for video" in proc.stderr
        assert "Traceback" not in proc.stderr
        pytest.skip(f"MuJoCo cannot render here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((run / "eval.json").read_text())
    from moviepy import VideoFileClip

    with VideoFileClip(result["videos"][0]) as clip:
        frames = list(clip.iter_frames())
    assert frames[0].shape == (96, 96, 3)  # the run's env.kwargs hold for the video too
    assert len(frames) >= result["length_mean"]  # the whole episode: a frame per step
    assert np.ptp(np.stack(frames).astype(np.float32)) > 0


def test_mujoco_warnings_leave_no_log_file_in_the_working_directory(tmp_path, monkeypatch):
    """HalfCheetah-v5's model warns at every load; MuJoCo would append it to MUJOCO_LOG.TXT in
    the user's working directory."""
    from rl_runner.envs import make_one

    monkeypatch.chdir(tmp_path)
    make_one("HalfCheetah-v5", {}).close()
    assert not (tmp_path / "MUJOCO_LOG.TXT").exists()
