"""What scripts/benchmark.py measures: the tasks, their hyperparameters, and the peer models.

Each task is one RL Zoo setting (or rl-runner's preset where that departs from the Zoo, said in
`from_zoo`) written in rl-runner's names (conf/tuned/<algo>_<env>.yaml must compose to exactly
these values: the benchmark checks) and translated here for the peer library
(stable-baselines3 for PPO and SAC, sb3-contrib for TRPO).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    algo_name: str    # rl-runner's algo group option
    env: str          # rl-runner's env group option (conf/env/<env>.yaml)
    env_id: str
    n_envs: int
    total_steps: int
    algo: dict        # rl-runner's algo.* values, including the ones left at their defaults
    from_zoo: str = ""  # how these values depart from the RL Zoo's, and why ("" = they don't)

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
    "ppo": {"objective": "clip", "vf_coef": 0.5, "max_grad_norm": 0.5, "norm_adv": True,
            "clip_vloss": False, "kl_early_stop": None, "hidden_sizes": [64, 64],
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
}
PEERS = {"ppo": "stable-baselines3", "trpo": "sb3-contrib", "sac": "stable-baselines3"}
TARGETS = {"ppo": "rl_runner.algos.ppo.PPO", "trpo": "rl_runner.algos.trpo.TRPO",
           "sac": "rl_runner.algos.sac.SAC"}

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
}

assert all(name == task.key for name, task in TASKS.items())


def peer_model(task: Task, env, seed: int, torch):
    """The peer library's model for `task` on the vector env `env`."""
    hp = task.algo
    activation = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[hp["activation"]]

    def linear(start: float):  # RL Zoo's lin_<x>: progress_remaining goes 1 -> 0
        return lambda progress_remaining: progress_remaining * start

    lr = linear(hp["lr"]) if hp["anneal_lr"] else hp["lr"]
    common = {"seed": seed, "device": "cpu", "verbose": 0}
    if task.algo_name == "ppo":
        from stable_baselines3 import PPO

        return PPO(
            "MlpPolicy", env, n_steps=hp["n_steps"], batch_size=hp["batch_size"],
            n_epochs=hp["n_epochs"], gamma=hp["gamma"], gae_lambda=hp["gae_lambda"],
            ent_coef=hp["ent_coef"], learning_rate=lr,
            clip_range=linear(hp["clip_coef"]) if hp["anneal_clip"] else hp["clip_coef"],
            vf_coef=hp["vf_coef"], max_grad_norm=hp["max_grad_norm"],
            normalize_advantage=hp["norm_adv"], target_kl=hp["kl_early_stop"],
            policy_kwargs={"net_arch": {"pi": list(hp["hidden_sizes"]),
                                        "vf": list(hp["hidden_sizes"])},
                           "activation_fn": activation}, **common)
    if task.algo_name == "trpo":
        from sb3_contrib import TRPO

        return TRPO(
            "MlpPolicy", env, learning_rate=lr, n_steps=hp["n_steps"],
            batch_size=hp["batch_size"], gamma=hp["gamma"], cg_max_steps=hp["cg_max_steps"],
            cg_damping=hp["cg_damping"],
            line_search_shrinking_factor=hp["line_search_shrinking_factor"],
            line_search_max_iter=hp["line_search_max_iter"], n_critic_updates=hp["value_epochs"],
            gae_lambda=hp["gae_lambda"], normalize_advantage=hp["norm_adv"],
            target_kl=hp["max_kl"],
            policy_kwargs={"net_arch": {"pi": list(hp["hidden_sizes"]),
                                        "vf": list(hp["hidden_sizes"])},
                           "activation_fn": activation}, **common)
    from stable_baselines3 import SAC

    return SAC(
        "MlpPolicy", env, learning_rate=lr, buffer_size=hp["buffer_size"],
        learning_starts=hp["learning_starts"], batch_size=hp["batch_size"], tau=hp["tau"],
        gamma=hp["gamma"], train_freq=hp["train_freq"], gradient_steps=hp["gradient_steps"],
        ent_coef="auto" if hp["ent_coef"] is None else hp["ent_coef"],
        target_entropy="auto" if hp["target_entropy"] is None else hp["target_entropy"],
        policy_kwargs={"net_arch": list(hp["hidden_sizes"]), "activation_fn": activation},
        **common)
