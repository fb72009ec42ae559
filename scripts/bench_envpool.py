"""EnvPool's own stepping rate for a benchmark task's envs: the ceiling that rl-runner's loop on
env.vectorization=envpool is compared with (issue 23: the loop at >= 50% of it).

The envs rl-runner builds (make_vec_env: its env settings, the task's number of envs, a thread
per usable core), stepped with uniformly random actions drawn beforehand, no policy and no
learning; the best of three blocks of about two seconds each.
"""
from __future__ import annotations

import time


def envpool_alone(env_id: str, n_envs: int, atari: dict | None = None, seconds: float = 2.0,
                  seed: int = 0) -> float | None:
    """Env steps per second of EnvPool alone on `env_id`, or None where it has no twin."""
    from rl_runner import envpool_env
    from rl_runner.config import atari_options
    from rl_runner.envs import make_vec_env
    from rl_runner.threads import usable_cores

    if envpool_env.twin(env_id, atari_options(atari)) is None:
        return None
    envs = make_vec_env(env_id, n_envs, vectorization="envpool", atari=atari, training=True,
                        threads=usable_cores())
    envs.action_space.seed(seed)
    actions = [envs.action_space.sample() for _ in range(64)]
    envs.reset(seed=seed)
    best = 0.0
    for _ in range(3):
        steps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for a in actions:
                envs.step(a)
            steps += len(actions) * n_envs
        best = max(best, steps / (time.perf_counter() - start))
    envs.close()
    return best
