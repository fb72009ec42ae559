"""What scripts/benchmark.py measures: the tasks, their hyperparameters, and the peer models.

Each task is one RL Zoo setting (or rl-runner's preset where that departs from the Zoo, said in
`from_zoo`) written in rl-runner's names (conf/tuned/<algo>_<env>.yaml must compose to exactly
these values: the benchmark checks) and translated here for the peer library
(stable-baselines3 for PPO and SAC, sb3-contrib for TRPO): its env (Atari wrappers, VecNormalize),
model and evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bench_peers import CLASSES


@dataclass(frozen=True)
class Task:
    algo_name: str    # rl-runner's algo group option
    env: str          # rl-runner's env group option (conf/env/<env>.yaml)
    env_id: str
    n_envs: int
    total_steps: int
    algo: dict        # rl-runner's algo.* values, including the ones left at their defaults
    from_zoo: str = ""  # how these values depart from the RL Zoo's, and why ("" = they don't)
    env_cfg: dict = field(default_factory=dict)  # rl-runner's env.* values beyond id and n_envs
    peer_policy: dict = field(default_factory=dict)  # the peer's policy_kwargs beyond net_arch

    @property
    def atari(self) -> bool:
        return "atari" in self.env_cfg

    @property
    def normalized(self) -> bool:
        return bool(self.algo.get("normalize_obs") or self.algo.get("normalize_reward"))

    @property
    def key(self) -> str:
        return f"{self.algo_name}-{self.env}"

    @property
    def step_size(self) -> int:
        """Env steps between updates: a whole rollout, or train_freq steps of every env."""
        return self.algo.get("n_steps", self.algo.get("train_freq", 1)) * self.n_envs


# What both libraries leave at their defaults, spelled out so that a changed default on either
# side shows up as a mismatch instead of a silently different benchmark.
COMMON = {
    "ppo": {"objective": "clip", "anneal_steps": None, "vf_coef": 0.5, "max_grad_norm": 0.5,
            "norm_adv": True, "clip_vloss": False, "kl_early_stop": None, "hidden_sizes": [64, 64],
            "activation": "tanh", "normalize_obs": False, "normalize_reward": False},
    # sb3-contrib's TRPO: no entropy bonus, no gradient clipping, value loss = plain MSE
    "trpo": {"cg_max_steps": 15, "line_search_shrinking_factor": 0.8, "line_search_max_iter": 10,
             "norm_adv": True, "ent_coef": 0.0, "max_grad_norm": 0.0,
             "vf_coef": 1.0, "anneal_lr": False, "hidden_sizes": [64, 64], "activation": "tanh",
             "normalize_obs": False, "normalize_reward": False},
    "sac": {"buffer_size": 1_000_000, "learning_starts": 100, "batch_size": 256, "tau": 0.005,
            "gamma": 0.99, "train_freq": 1, "gradient_steps": 1, "ent_coef": None,
            "target_entropy": None, "alpha_init": 1.0, "anneal_lr": False,
            "hidden_sizes": [256, 256], "activation": "relu"},
    # SB3's DQN: plain DQN (no double Q, dueling or prioritized replay; n-step returns as n_steps)
    "dqn": {"tau": 1.0, "exploration_initial_eps": 1.0, "max_grad_norm": 10.0,
            "double_q": False, "dueling": False, "n_step": 1, "prioritized": False,
            "anneal_lr": False, "activation": "relu"},
    "td3": {"buffer_size": 1_000_000, "batch_size": 256, "tau": 0.005, "gamma": 0.99,
            "policy_delay": 2, "target_policy_noise": 0.2, "target_noise_clip": 0.5,
            "actor_lr": None, "anneal_lr": False, "activation": "relu"},
    "a2c": {"gamma": 0.99, "gae_lambda": 1.0, "vf_coef": 0.5, "max_grad_norm": 0.5,
            "norm_adv": False, "use_rms_prop": True, "rms_prop_eps": 1e-5,
            "rms_prop_tf_like": False, "hidden_sizes": [64, 64], "activation": "tanh",
            "normalize_obs": False, "normalize_reward": False},
}
# SB3's CnnPolicy: the Nature CNN (512 features, ReLU) under linear actor and critic heads, as
# rl-runner's encoder=auto builds for images (its hidden_sizes and activation are not used)
COMMON["ppo_cnn"] = {**{k: v for k, v in COMMON["ppo"].items()
                        if k not in ("hidden_sizes", "activation")},
                     "encoder": "auto", "cnn_channels": [32, 64, 64], "cnn_kernels": [8, 4, 3],
                     "cnn_strides": [4, 2, 1], "cnn_features": 512}
# SB3's AtariWrapper defaults (noop 30, skip 4 with max-pool, 84x84 grey, a lost life ends the
# training episode, FIRE on reset, reward sign) and VecFrameStack(4), in rl-runner's env.atari
ATARI = {"noop_max": 30, "frame_skip": 4, "screen_size": 84, "grayscale": True,
         "frame_stack": 4, "episodic_life": True, "fire_reset": True, "clip_reward": True}
TARGETS = {"ppo": "rl_runner.algos.ppo.PPO", "trpo": "rl_runner.algos.trpo.TRPO",
           "sac": "rl_runner.algos.sac.SAC", "dqn": "rl_runner.algos.dqn.DQN",
           "td3": "rl_runner.algos.td3.TD3", "ddpg": "rl_runner.algos.td3.DDPG",
           "a2c": "rl_runner.algos.a2c.A2C"}

# the Zoo's one TD3 setting for its MuJoCo envs (hyperparams/td3.yml, &mujoco-defaults)
TD3_MUJOCO = {**COMMON["td3"], "lr": 1e-3, "learning_starts": 10_000, "action_noise": 0.1,
              "train_freq": 1, "gradient_steps": 1, "hidden_sizes": [400, 300]}

# RL Zoo hyperparams/<algo>.yml
TASKS = {
    "ppo-cartpole": Task("ppo", "cartpole", "CartPole-v1", 8, 100_000, {
        "n_steps": 32, "batch_size": 256, "n_epochs": 20, "gamma": 0.98, "gae_lambda": 0.8,
        "lr": 1e-3, "anneal_lr": True, "clip_coef": 0.2, "anneal_clip": True, "ent_coef": 0.0,
        **COMMON["ppo"]}),
    "ppo-lunarlander": Task("ppo", "lunarlander", "LunarLander-v3", 16, 1_000_000, {
        "n_steps": 1024, "batch_size": 64, "n_epochs": 4, "gamma": 0.999, "gae_lambda": 0.98,
        "lr": 3e-4, "anneal_lr": False, "clip_coef": 0.2, "anneal_clip": False, "ent_coef": 0.01,
        **COMMON["ppo"]}),
    "trpo-cartpole": Task("trpo", "cartpole", "CartPole-v1", 2, 100_000, {
        "n_steps": 1024, "batch_size": 512, "cg_damping": 1e-3, "gae_lambda": 0.98,
        "gamma": 0.99, "lr": 1e-3, "value_epochs": 20, "max_kl": 0.005, **COMMON["trpo"]},
        from_zoo="n_steps 1024 (Zoo 512) and max_kl 0.005 (Zoo target_kl 0.01), rl-runner's "
        "preset, which ends at 500 on seeds 0-11 where the Zoo's values fell short on 3 of them"),
    "sac-pendulum": Task("sac", "pendulum", "Pendulum-v1", 1, 20_000, {
        "lr": 1e-3, **COMMON["sac"]}),
    "sac-halfcheetah": Task("sac", "halfcheetah", "HalfCheetah-v5", 1, 1_000_000, {
        "lr": 3e-4, **COMMON["sac"], "learning_starts": 10_000},
        from_zoo="HalfCheetah-v5 (the Zoo tuned v4)"),
    # atari: lin_2.5e-4 and lin_0.1 are anneal_lr and anneal_clip, over the Zoo's 10M steps
    # however short the run (anneal_steps; the peer gets the same schedule)
    "ppo-breakout": Task("ppo", "breakout", "BreakoutNoFrameskip-v4", 8, 10_000_000, {
        **COMMON["ppo_cnn"], "n_steps": 128, "batch_size": 256, "n_epochs": 4, "gamma": 0.99,
        "gae_lambda": 0.95, "lr": 2.5e-4, "anneal_lr": True, "clip_coef": 0.1,
        "anneal_clip": True, "anneal_steps": 10_000_000, "ent_coef": 0.01},
        env_cfg={"atari": ATARI},
        from_zoo="a shorter run keeps the Zoo's 10M-step schedules (lr and clip annealed over "
        "10M steps, not squeezed into the run)"),
    "ppo-hopper": Task("ppo", "hopper", "Hopper-v5", 1, 1_000_000, {
        **COMMON["ppo"], "n_steps": 2048, "batch_size": 64, "n_epochs": 10, "gamma": 0.99,
        "gae_lambda": 0.95, "lr": 3e-4, "anneal_lr": True, "clip_coef": 0.2,
        "anneal_clip": False, "ent_coef": 0.0, "normalize_obs": True, "normalize_reward": True},
        from_zoo="rl-runner's preset: the PPO paper's MuJoCo settings with the Zoo's normalize; "
        "the Zoo's Hopper values (tuned on v3/v4) stood at ~1000 on Hopper-v5 seed 1 in both "
        "libraries"),
    "dqn-cartpole": Task("dqn", "cartpole", "CartPole-v1", 1, 50_000, {
        **COMMON["dqn"], "lr": 1e-3, "anneal_lr": True, "batch_size": 64,
        "buffer_size": 100_000, "learning_starts": 1000, "gamma": 0.99,
        "target_update_interval": 10, "train_freq": 256, "gradient_steps": 128,
        "exploration_fraction": 0.16, "exploration_final_eps": 0.04, "hidden_sizes": [256, 256],
        "n_step": 3},
        from_zoo="lr 1e-3 annealed to 0 (Zoo: 2.3e-3 constant, whose policy swings between 500 "
        "and ~100 to the end) and 3-step returns (Zoo: 1; 33 of 40 runs ended >= 475 with 1 step, "
        "39 of 40 with 3), rl-runner's preset"),
    "a2c-cartpole": Task("a2c", "cartpole", "CartPole-v1", 8, 500_000, {
        **COMMON["a2c"], "lr": 7e-4, "anneal_lr": False, "n_steps": 5, "ent_coef": 0.0}),
    "td3-pendulum": Task("td3", "pendulum", "Pendulum-v1", 1, 20_000, {
        **COMMON["td3"], "lr": 1e-3, "gamma": 0.98, "buffer_size": 200_000,
        "learning_starts": 10_000, "action_noise": 0.1, "train_freq": 1, "gradient_steps": 1,
        "hidden_sizes": [400, 300]}),
    "td3-halfcheetah": Task("td3", "halfcheetah", "HalfCheetah-v5", 1, 1_000_000,
                            TD3_MUJOCO, from_zoo="HalfCheetah-v5 (the Zoo tuned v4)"),
    "td3-hopper": Task("td3", "hopper", "Hopper-v5", 1, 1_000_000, TD3_MUJOCO,
                       from_zoo="Hopper-v5 (the Zoo tuned v4)"),
}

assert all(name == task.key for name, task in TASKS.items())


def peer_env(task: Task, seed: int):
    """The peer's training env: the Zoo's Atari wrappers and 4 stacked frames, VecNormalize
    (with the algorithm's gamma, as the Zoo passes it) where rl-runner normalizes, else plain."""
    from stable_baselines3.common.env_util import make_atari_env, make_vec_env
    from stable_baselines3.common.vec_env import VecFrameStack, VecNormalize

    if task.atari:
        from rl_runner.envs import register_ale

        register_ale()
        return VecFrameStack(make_atari_env(task.env_id, n_envs=task.n_envs, seed=seed),
                             task.env_cfg["atari"]["frame_stack"])
    env = make_vec_env(task.env_id, n_envs=task.n_envs, seed=seed)
    if task.normalized:
        env = VecNormalize(env, norm_obs=task.algo["normalize_obs"],
                           norm_reward=task.algo["normalize_reward"], gamma=task.algo["gamma"])
    return env


def peer_description(task: Task) -> str:
    """How peer_env and peer_model build the peer's side, for the benchmark's header."""
    cls = CLASSES[task.algo_name]
    if task.atari:
        env = "VecFrameStack(make_atari_env(<env id>, n_envs, seed=<seed>), 4)"
    elif task.normalized:
        env = "VecNormalize(make_vec_env(<env id>, n_envs, seed=<seed>), gamma=<gamma>)"
    else:
        env = "make_vec_env(<env id>, n_envs, seed=<seed>)"
    return (f"`{cls}(\"{'CnnPolicy' if task.atari else 'MlpPolicy'}\", {env}, <hyperparameters "
            "below>, seed=<seed>, device=<device>, verbose=0)`")


def peer_policy(task: Task, model, env, deterministic: bool = True):
    """The peer model's actions for a batch of observations as rl-runner's Evaluator gives them
    (normalized with the training env's statistics where it has them): its mode, or sampled
    where rl-runner's preset evaluates with sampled actions (trainer.eval_deterministic=false,
    Atari as the RL Zoo), so that both sides are scored alike."""
    if task.normalized and task.algo["normalize_obs"]:
        return lambda obs: model.predict(env.normalize_obs(obs), deterministic=deterministic)[0]
    return lambda obs: model.predict(obs, deterministic=deterministic)[0]


def peer_evaluator(task: Task, n_episodes: int, seed: int):
    """Where the peer's model is evaluated: rl-runner's Evaluator (the same episodes as
    rl-runner's), except on Atari, where SB3's model plays in its own wrappers (PeerAtariEval)."""
    if task.atari:
        return PeerAtariEval(task, n_episodes, seed)
    from rl_runner.evaluation import Evaluator

    return Evaluator(task.env_id, n_episodes, seed)


class PeerAtariEval:
    """Whole games at their real score for an SB3 Atari model, in the wrappers it trained in:
    Monitor (under AtariWrapper) counts every point of a game until its last life, as
    rl-runner's Evaluator does with training=False. Same interface as Evaluator."""

    def __init__(self, task: Task, n_episodes: int, seed: int, max_envs: int = 20):
        from stable_baselines3.common.env_util import make_atari_env
        from stable_baselines3.common.vec_env import VecFrameStack

        from rl_runner.envs import register_ale

        register_ale()
        self.n_envs = min(n_episodes, max_envs)
        self.envs = VecFrameStack(make_atari_env(task.env_id, n_envs=self.n_envs, seed=seed),
                                  task.env_cfg["atari"]["frame_stack"])
        self.seed = seed
        self.quota = np.full(self.n_envs, n_episodes // self.n_envs)
        self.quota[: n_episodes % self.n_envs] += 1

    def run(self, policy) -> dict[str, float]:
        self.envs.seed(self.seed)
        obs = self.envs.reset()
        finished = np.zeros(self.n_envs, np.int64)
        returns: list[float] = []
        lengths: list[int] = []
        while (finished < self.quota).any():
            obs, _, _, infos = self.envs.step(policy(obs))
            for i, info in enumerate(infos):
                game = info.get("episode")  # Monitor's: the game is over, not just a life
                if game is not None and finished[i] < self.quota[i]:
                    returns.append(float(game["r"]))
                    lengths.append(int(game["l"]))
                    finished[i] += 1
        return {"return_mean": float(np.mean(returns)), "return_std": float(np.std(returns)),
                "length_mean": float(np.mean(lengths)), "episodes": len(returns)}

    def close(self) -> None:
        self.envs.close()
