"""One update of every algorithm on the CPU and on a device, from the same state and batch:
do the parameters after it agree? The harness of scripts/gpu_check.py (part a).

Each case builds the algorithm three times from one seed through build_algo, as the trainer does:
once on the CPU (the reference) and twice on the device. The device copies take the reference's
state (parameters, optimizer moments, generators, normalizer statistics) so that all three start
alike whatever their own initialization drew; the batch comes from the trainer's own feeder, run
on the CPU algorithm, whose calls from the feeder are replayed on the device copies (gail keeps
what it saw while acting); each then makes one update on a copy of the batch, with the global
generators seeded alike. With device "cpu" this is a dry run: the three must agree bit for bit.
"""
from __future__ import annotations

import copy
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf, open_dict

from rl_runner.algos.build import algo_class, build_algo
from rl_runner.algos.contracts import constructor_params
from rl_runner.checkpoint import save_checkpoint, seed_everything
from rl_runner.envs import env_options, make_vec_env
from rl_runner.errors import UserError, one_line
from rl_runner.trainer import make_feeder

SMALL_MLP = {"algo.hidden_sizes": [32, 32]}
# small enough for a CPU, big enough for every feeder: keys a config lacks are left out
TINY = {
    "pg": {"env.n_envs": 2, "algo.n_steps": 32, "algo.backend": "torch", **SMALL_MLP},
    "ppo": {"env.n_envs": 2, "algo.n_steps": 32, "algo.batch_size": 32, "algo.n_epochs": 2,
            "algo.backend": "torch", **SMALL_MLP},
    "trpo": {"env.n_envs": 2, "algo.n_steps": 32, "algo.batch_size": 32, "algo.value_epochs": 2,
             "algo.backend": "torch", **SMALL_MLP},
    "sac": {"env.n_envs": 1, "algo.buffer_size": 1000, "algo.learning_starts": 64,
            "algo.batch_size": 32, **SMALL_MLP},
    "bc": {"algo.batch_size": 32, "dataset.expert_episodes": 2, **SMALL_MLP},
    "cql": {"algo.batch_size": 32, "dataset.expert_episodes": 2, **SMALL_MLP},
    "gail": {"env.n_envs": 2, "algo.disc_batch_size": 32, "algo.disc_hidden_sizes": [32, 32],
             "dataset.expert_episodes": 2, "algo.learner_kwargs": {
                 "n_steps": 32, "batch_size": 32, "n_epochs": 2, "backend": "torch",
                 "hidden_sizes": [32, 32]}},
}
# case: (algo, env, overrides beyond TINY)
CASES = {
    "pg": ("pg", "pendulum", {}),
    "ppo clip": ("ppo", "cartpole", {"algo.objective": "clip"}),
    "ppo kl_penalty": ("ppo", "pendulum", {"algo.objective": "kl_penalty"}),
    "ppo images": ("ppo", "breakout", {"algo.n_steps": 8, "algo.batch_size": 16,
                                       "algo.n_epochs": 1}),
    "trpo": ("trpo", "pendulum", {}),
    "sac Box": ("sac", "pendulum", {}),
    "sac Discrete": ("sac", "cartpole", {}),
    "bc": ("bc", "cartpole", {}),
    "cql Box": ("cql", "pendulum", {}),
    "cql Discrete": ("cql", "cartpole", {}),
    "gail": ("gail", "cartpole", {}),
}


def takes_device(cls: type) -> bool:
    """Whether build_algo hands the class trainer.device (else it runs on the CPU only)."""
    return "device" in constructor_params(cls)


class Recorder:
    """Stands for an algorithm before a feeder: forwards everything and records the method
    calls, so that another copy can be given the same calls (replay)."""

    def __init__(self, algo):
        self._algo, self._calls = algo, []

    def __getattr__(self, name: str):
        value = getattr(self._algo, name)
        if not callable(value):
            return value

        def call(*args, **kwargs):
            self._calls.append((name, copy.deepcopy(args), copy.deepcopy(kwargs)))
            return value(*args, **kwargs)
        return call

    def replay(self, other) -> None:
        for name, args, kwargs in self._calls:
            getattr(other, name)(*copy.deepcopy(args), **copy.deepcopy(kwargs))


@dataclass
class Result:
    case: str
    verdict: str  # equal | close | DIFFERS | cpu only | skipped | failed
    algo: str = ""
    state_on: str = ""  # where the device copies' tensors are
    diff: float = float("nan")  # max |reference - device| over every float in the state
    ratio: float = float("nan")  # the largest such difference relative to its tensor's update
    worst: str = ""  # the tensor of that ratio
    repeat: float = float("nan")  # max |device - device|: the device's own repeatability
    metrics: float = float("nan")  # max relative difference of the update's metrics
    checkpoint: str = ""  # where a checkpoint of the device copy keeps its tensors
    note: str = ""



def compose_case(algo: str, env: str, extra: dict):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="rl_runner.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"algo={algo}", f"env={env}"])
    with open_dict(cfg):
        for key, value in {**TINY[algo], **extra}.items():
            if OmegaConf.select(cfg, key, default=KeyError) is not KeyError:
                OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def floats(tree, prefix: str = "") -> dict[str, np.ndarray]:
    """Every floating value of a state dict, as float64 arrays on the CPU, by path."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree.detach().cpu().double().numpy()} if tree.is_floating_point() else {}
    if isinstance(tree, np.ndarray):
        return {prefix: tree.astype(np.float64)} if tree.dtype.kind == "f" else {}
    if isinstance(tree, float):
        return {prefix: np.array(tree)}
    if isinstance(tree, dict):
        return {p: v for k, sub in tree.items() for p, v in floats(sub, f"{prefix}{k}.").items()}
    if isinstance(tree, (list, tuple)):
        return {p: v for i, sub in enumerate(tree) for p, v in floats(sub, f"{prefix}{i}.").items()}
    return {}


def max_diff(a: dict, b: dict) -> float:
    if set(a) != set(b):
        raise ValueError(f"the states differ in keys: {sorted(set(a) ^ set(b))[:3]}")
    return max((float(np.max(np.abs(a[k] - b[k]))) for k in a if a[k].size), default=0.0)


def worst_ratio(before: dict, ref: dict, other: dict) -> tuple[float, str]:
    """The largest |ref - other| of a tensor relative to the largest change the reference's
    update made to it (inf where the update left it as it was but the two differ); its path.
    A tensor the update created (an optimizer's moments) counts from zero."""
    worst, where = 0.0, ""
    for k in ref:
        if not ref[k].size:
            continue
        diff = float(np.max(np.abs(ref[k] - other[k])))
        change = float(np.max(np.abs(ref[k] - before.get(k, 0.0))))
        ratio = diff / change if change > 0 else (0.0 if diff == 0 else float("inf"))
        if ratio > worst:
            worst, where = ratio, k.rstrip(".")
    return worst, where


def devices_of(tree) -> set[str]:
    if isinstance(tree, torch.Tensor):
        return {tree.device.type}
    if isinstance(tree, dict):
        tree = list(tree.values())
    if isinstance(tree, (list, tuple)):
        return set().union(*(devices_of(v) for v in tree)) if tree else set()
    return set()


def checkpoint_location(state: dict) -> str:
    """Where torch.load would put the tensors of a checkpoint of `state` (its storage tags)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "check.pt"
        save_checkpoint(path, {"algo": state})
        with zipfile.ZipFile(path) as z:
            pickled = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    return "cuda (not portable)" if b"cuda" in pickled else "cpu"


def run_case(name: str, device: str) -> Result:
    algo, env, extra = CASES[name]
    try:
        cfg = compose_case(algo, env, extra)
    except Exception as e:  # env=breakout not in this checkout, ...
        return Result(name, "skipped", note=one_line(e, 120))
    try:
        envs = make_vec_env(cfg.env.id, cfg.env.n_envs, vectorization="sync", training=True,
                            **env_options(cfg.env))
    except UserError as e:  # an extra not installed (ale-py, mujoco)
        return Result(name, "skipped", note=str(e)[:160])
    try:
        return compare(name, cfg, envs, device)
    except Exception as e:
        return Result(name, "failed", note=f"{type(e).__name__}: {one_line(e, 200)}")
    finally:
        envs.close()


def compare(name: str, cfg, envs, device: str) -> Result:
    obs_space, action_space = envs.single_observation_space, envs.single_action_space
    cls = algo_class(cfg).variant_for(action_space)
    label = cls.__name__
    if device != "cpu" and not takes_device(cls):
        return Result(name, "cpu only", label, note="its constructor takes no device")
    algos = []
    for where in ("cpu", device, device):
        seed_everything(cfg.seed)
        algos.append(build_algo(cfg, obs_space, action_space, where))
    ref, *others = algos
    for other in others:  # the trainer's set-up of each: datasets fitted, normalizers, ...
        seed_everything(cfg.seed)
        make_feeder(cfg, envs, other)
    seed_everything(cfg.seed)
    feeder = make_feeder(cfg, envs, ref)
    recorder = Recorder(ref)
    batch = None
    while batch is None:  # off-policy: until learning_starts
        batch, _ = feeder.collect(recorder)
    start = copy.deepcopy(ref.state_dict())
    for other in others:  # what acting leaves outside the state; then one starting point,
        recorder.replay(other)  # whatever each device's initialization drew
        other.load_state_dict(copy.deepcopy(start))
    before = floats(start)
    metrics, after = [], []
    for a in algos:
        seed_everything(cfg.seed + 1)
        metrics.append(a.update(copy.deepcopy(batch)))
        after.append(floats(a.state_dict()))
    r = Result(name, "", label, state_on=",".join(sorted(devices_of(others[0].state_dict()))))
    r.diff, r.repeat = max_diff(after[0], after[1]), max_diff(after[1], after[2])
    r.ratio, r.worst = worst_ratio(before, after[0], after[1])
    r.metrics = max((abs(metrics[0][k] - metrics[1][k]) / max(abs(metrics[0][k]), 1e-8)
                     for k in metrics[0]), default=0.0)
    if device != "cpu":
        r.checkpoint = checkpoint_location(others[0].state_dict())
    if not takes_device(cls):
        r.note = "its constructor takes no device: cpu only"
    return r


def verdict(r: Result, device: str, tol: float) -> str:
    """equal: bit for bit; close: the device's update differs from the CPU's by at most `tol`
    of the update's own size, tensor by tensor (a GPU sums in another order; cuDNN may pick
    other kernels)."""
    if r.verdict:
        return r.verdict
    if r.diff == 0 and r.metrics == 0:
        return "equal"
    if device != "cpu" and r.ratio <= tol:
        return "close"
    return "DIFFERS"


def check(device: str, cases: list[str], tol: float) -> list[Result]:
    """The equality check of every case, each with its verdict."""
    results = []
    for name in cases:
        r = run_case(name, device)
        r.verdict = verdict(r, device, tol)
        results.append(r)
    return results


def table(results: list[Result], device: str) -> list[str]:
    """Markdown rows of the results."""
    def num(x: float) -> str:
        return "" if x != x else f"{x:.2g}"

    lines = [f"| case | class | verdict | state on | max abs diff cpu vs {device} | largest diff "
             f"/ update (tensor) | {device} vs {device} | losses max rel diff | checkpoint holds "
             "| note |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        worst = f"{num(r.ratio)} ({r.worst})" if r.worst else num(r.ratio)
        lines.append(f"| {r.case} | {r.algo} | {r.verdict} | {r.state_on} | {num(r.diff)} | "
                     f"{worst} | {num(r.repeat)} | {num(r.metrics)} | {r.checkpoint} | "
                     f"{r.note} |")
    return lines
