"""The peer library's model for a benchmark task: stable-baselines3 (ppo, sac, dqn, td3, ddpg,
a2c) or sb3-contrib (trpo), given the task's hyperparameters in rl-runner's names."""
from __future__ import annotations

import numpy as np

PEERS = {"ppo": "stable-baselines3", "trpo": "sb3-contrib", "sac": "stable-baselines3",
         "dqn": "stable-baselines3", "td3": "stable-baselines3", "ddpg": "stable-baselines3",
         "a2c": "stable-baselines3"}
CLASSES = {"ppo": "PPO", "trpo": "TRPO", "sac": "SAC", "dqn": "DQN", "td3": "TD3",
           "ddpg": "DDPG", "a2c": "A2C"}


def linear(start: float, steps: int, horizon: int | None = None):
    """RL Zoo's lin_<x> for a run of `steps` (SB3's progress_remaining goes 1 -> 0 over them),
    decaying over `horizon` steps where that is longer (rl-runner's algo.anneal_steps)."""
    share = steps / max(steps, horizon or 0)
    return lambda progress_remaining: start * (1.0 - (1.0 - progress_remaining) * share)


def peer_model(task, env, seed: int, torch, steps: int, device: str = "cpu"):
    """The peer library's model for `task`, run for `steps` env steps, on the vector env `env`."""
    hp, name = task.algo, task.algo_name
    activation = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[hp.get("activation", "tanh")]
    horizon = hp.get("anneal_steps")
    lr = linear(hp["lr"], steps, horizon) if hp["anneal_lr"] else hp["lr"]
    common = {"seed": seed, "device": device, "verbose": 0}
    policy = "CnnPolicy" if task.atari else "MlpPolicy"
    two_nets = {"net_arch": {"pi": list(hp.get("hidden_sizes", [])),
                             "vf": list(hp.get("hidden_sizes", []))}, "activation_fn": activation}
    if name in ("ppo", "a2c"):
        kwargs = {"log_std_init": hp.get("log_std_init", 0.0), **task.peer_policy}
        if not task.atari:  # CnnPolicy's default: no hidden layers under the Nature CNN
            kwargs.update(two_nets)
        if name == "a2c":
            return a2c(task, env, lr, kwargs, common)
        from stable_baselines3 import PPO

        return PPO(
            policy, env, n_steps=hp["n_steps"], batch_size=hp["batch_size"],
            n_epochs=hp["n_epochs"], gamma=hp["gamma"], gae_lambda=hp["gae_lambda"],
            ent_coef=hp["ent_coef"], learning_rate=lr,
            clip_range=(linear(hp["clip_coef"], steps, horizon) if hp["anneal_clip"]
                        else hp["clip_coef"]),
            vf_coef=hp["vf_coef"], max_grad_norm=hp["max_grad_norm"],
            normalize_advantage=hp["norm_adv"], target_kl=hp["kl_early_stop"],
            policy_kwargs=kwargs, **common)
    if name == "trpo":
        from sb3_contrib import TRPO

        return TRPO(
            policy, env, learning_rate=lr, n_steps=hp["n_steps"],
            batch_size=hp["batch_size"], gamma=hp["gamma"], cg_max_steps=hp["cg_max_steps"],
            cg_damping=hp["cg_damping"],
            line_search_shrinking_factor=hp["line_search_shrinking_factor"],
            line_search_max_iter=hp["line_search_max_iter"], n_critic_updates=hp["value_epochs"],
            gae_lambda=hp["gae_lambda"], normalize_advantage=hp["norm_adv"],
            target_kl=hp["max_kl"], policy_kwargs=two_nets, **common)
    # off-policy: one replay setting for all
    replay = dict(learning_rate=lr, buffer_size=hp["buffer_size"],
                  learning_starts=hp["learning_starts"], batch_size=hp["batch_size"],
                  tau=hp["tau"], gamma=hp["gamma"], train_freq=hp["train_freq"],
                  gradient_steps=hp["gradient_steps"], **common)
    one_net = {"net_arch": list(hp.get("hidden_sizes", [])), "activation_fn": activation}
    if name == "dqn":
        from stable_baselines3 import DQN

        missing = [k for k in ("double_q", "dueling", "prioritized") if hp[k]]
        if missing:  # SB3's DQN has n-step returns (n_steps), none of these
            raise ValueError(f"SB3's DQN has no {', '.join(missing)}")
        return DQN(policy, env, target_update_interval=hp["target_update_interval"],
                   n_steps=hp["n_step"],
                   exploration_fraction=hp["exploration_fraction"],
                   exploration_initial_eps=hp["exploration_initial_eps"],
                   exploration_final_eps=hp["exploration_final_eps"],
                   max_grad_norm=hp["max_grad_norm"], policy_kwargs=one_net, **replay)
    if name in ("td3", "ddpg"):
        import stable_baselines3

        n = env.action_space.shape[-1]
        from stable_baselines3.common.noise import NormalActionNoise

        noise = NormalActionNoise(np.zeros(n), hp["action_noise"] * np.ones(n)) \
            if hp["action_noise"] else None
        extra = {} if name == "ddpg" else {
            "policy_delay": hp["policy_delay"], "target_policy_noise": hp["target_policy_noise"],
            "target_noise_clip": hp["target_noise_clip"]}
        cls = getattr(stable_baselines3, CLASSES[name])
        return cls(policy, env, action_noise=noise, policy_kwargs=one_net, **extra, **replay)
    from stable_baselines3 import SAC

    return SAC(
        policy, env, ent_coef="auto" if hp["ent_coef"] is None else hp["ent_coef"],
        target_entropy="auto" if hp["target_entropy"] is None else hp["target_entropy"],
        policy_kwargs=one_net, **replay)


def a2c(task, env, lr, policy_kwargs: dict, common: dict):
    """SB3's A2C; the Zoo's Atari setting swaps its RMSprop for RMSpropTFLike."""
    from stable_baselines3 import A2C

    hp = task.algo
    if hp["use_rms_prop"] and hp["rms_prop_tf_like"]:
        from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike

        policy_kwargs = {**policy_kwargs, "optimizer_class": RMSpropTFLike,
                         "optimizer_kwargs": {"eps": hp["rms_prop_eps"]}}
    return A2C(
        "CnnPolicy" if task.atari else "MlpPolicy", env, learning_rate=lr,
        n_steps=hp["n_steps"], gamma=hp["gamma"], gae_lambda=hp["gae_lambda"],
        ent_coef=hp["ent_coef"], vf_coef=hp["vf_coef"], max_grad_norm=hp["max_grad_norm"],
        rms_prop_eps=hp["rms_prop_eps"], use_rms_prop=hp["use_rms_prop"],
        normalize_advantage=hp["norm_adv"], policy_kwargs=policy_kwargs, **common)
