"""Where one SAC update's time goes: rl-runner's update against SB3's and the matmuls alone,
and the whole env step of training against the matmuls' floor.

The configuration of the speed bar: Pendulum (3 observations, 1 action), two 256x256 hidden
layers, batch 256, one gradient step; each update samples its minibatch from a replay buffer, as in
training. Every configuration runs in a fresh process (glibc's malloc settings and the thread pools
never carry over), in rounds that alternate the configurations; a configuration's figure is the
median over rounds of its best block of updates. The step-* configurations time the whole env step
(acting, the env, storing, sampling, the update, logging) of the training loop itself, after a
warm-up: `rl-run algo=sac env=pendulum` (the tuned preset) and SB3's `learn` with the same
settings; their figure is ms per env step, 1 / steps per second.

    python scripts/sac_update_speed.py     # writes the sac-update section of docs/benchmarks.md
    python scripts/sac_update_speed.py --rounds 1 --updates 30 --out /tmp/x.md   # a quick look
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine, package_versions, replace_section  # noqa: E402

OBS, ACT, HIDDEN, BATCH = 3, 1, (256, 256), 256
SECTION = "<!-- sac-update:start -->", "<!-- sac-update:end -->"
# name: (torch threads, what it measures); the number in a name is the thread count
CONFIGS = {
    "matmuls-1": (1, "the update's matrix products alone, into preallocated outputs"),
    "matmuls-2": (2, "the same on 2 threads"),
    "rl-runner-1": (1, "SAC.update as rl-run runs it"),
    "rl-runner-2": (2, "the same on 2 threads (what `auto` picks here)"),
    "rl-runner-2-malloc-defaults": (2, "without `keep_freed_memory` (threads.py)"),
    "rl-runner-2-autograd": (2, "the autograd step (`SAC._box_step`) instead of the "
                                "hand-written one (sac_grad.py)"),
    "rl-runner-2-dq-da-by-autograd": (
        2, "dQ/da by autograd through both critics instead of `min_q_action_grad` (sac.py)"),
    "rl-runner-2-no-narrow-output": (2, "output layers of a few columns as plain `baddbmm` / "
                                        "`bmm` instead of the [K, O, B] layout (twin_critic.py)"),
    "rl-runner-2-torch-adam": (2, "torch.optim.Adam(foreach=True) steps instead of `FlatAdam`'s "
                                  "one fused call (optim.py)"),
    "sb3-1": (1, "stable-baselines3 SAC.train(gradient_steps=1, batch_size=256)"),
    "sb3-2": (2, "the same on 2 threads (torch's default here)"),
    "step-auto": (0, "whole env step of `rl-run algo=sac env=pendulum`, trainer.torch_threads="
                     "auto (threads: what auto picked)"),
    "step-1": (1, "the same with trainer.torch_threads=1"),
    "step-sb3-1": (1, "whole env step of stable-baselines3's SAC.learn, the same settings"),
    "step-sb3-2": (2, "the same on 2 threads (torch's default here)"),
}
WARM_STEPS = 400  # env steps before the timed blocks: learning_starts 100, then 300 updates


def matmul_shapes() -> list[tuple[int, int, int, int, bool]]:
    """(members, rows, inner, columns, left side transposed) of each product of one update."""
    h1, h2 = HIDDEN
    crit, out = OBS + ACT, 2 * ACT
    actor = [(1, BATCH, OBS, h1, False), (1, BATCH, h1, h2, False), (1, BATCH, h2, out, False)]
    critic = [(2, BATCH, crit, h1, False), (2, BATCH, h1, h2, False), (2, BATCH, h2, 1, False)]
    shapes = 2 * actor + 3 * critic  # actor on s and s'; critics on (s', a'), (s, a), (s, a_pi)
    # the critics' backward: weight gradients (left side transposed) and hidden-layer gradients
    shapes += [(2, h2, BATCH, 1, True), (2, h1, BATCH, h2, True), (2, BATCH, h2, h1, False),
               (2, crit, BATCH, h1, True)]
    # dQ/da through the critic that gives each row's min: half the rows per critic
    shapes += [(2, BATCH // 2, h2, h1, False), (2, BATCH // 2, h1, ACT, False)]
    # the actor's backward
    shapes += [(1, h2, BATCH, out, True), (1, BATCH, out, h2, False), (1, h1, BATCH, h2, True),
               (1, BATCH, h2, h1, False), (1, OBS, BATCH, h1, True)]
    return shapes


def matmul_runner(torch):
    ops = []
    for k, m, inner, n, transposed in matmul_shapes():
        left = torch.randn(k, inner, m).transpose(1, 2) if transposed else torch.randn(k, m, inner)
        ops.append((left, torch.randn(k, inner, n), torch.empty(k, m, n)))

    def run():
        for left, right, out in ops:
            torch.bmm(left, right, out=out)
    return run


def through_both_critics(torch):
    """SAC.min_q_action_grad's result by autograd through both critics (the previous method)."""
    def min_q_action_grad(self, obs_BD, a_BA):
        a_BA = a_BA.clone().requires_grad_(True)
        with torch.enable_grad():
            q_min_B = self.q(torch.cat([obs_BD, a_BA], -1))[..., 0].min(0).values
            grad_BA, = torch.autograd.grad(q_min_B.sum(), a_BA)
        return q_min_B.detach(), grad_BA
    return min_q_action_grad


def rl_runner_runner(name: str, torch, np):
    import gymnasium as gym

    from rl_runner.algos import mlp_grad, sac, twin_critic
    from rl_runner.replay import ReplayBuffer
    from rl_runner.threads import keep_freed_memory
    if "malloc-defaults" not in name:
        keep_freed_memory()
    if "autograd" in name:
        sac.SAC.min_q_action_grad = through_both_critics(torch)
    if "no-narrow-output" in name:
        twin_critic.NARROW = mlp_grad.NARROW = 0
    algo = sac.SAC(observation_space=gym.spaces.Box(-8, 8, (OBS,), np.float32),
                   action_space=gym.spaces.Box(-2, 2, (ACT,), np.float32), n_envs=1,
                   total_steps=100_000, seed=0, hidden_sizes=list(HIDDEN), batch_size=BATCH)
    if name.endswith("-autograd"):
        algo.manual_grad = False
    if "torch-adam" in name:  # FlatAdam's parameters and gradients stay views of its buffers
        for opt in (algo.actor_opt, algo.critics.opt, algo.alpha_opt):
            opt.step = torch.optim.Adam(opt.params, lr=opt.lr, foreach=True).step
    rng = np.random.default_rng(0)
    buf = ReplayBuffer(10_000, OBS, ACT)
    obs = rng.normal(size=(10_000, OBS)).astype(np.float32)
    buf.add(obs, algo.random_actions(10_000, rng), rng.normal(size=10_000),
            rng.random(10_000) < 0.01, obs)
    return lambda: algo.update(buf.sample(1, BATCH, rng))


def sb3_runner(torch):
    from stable_baselines3 import SAC
    model = SAC("MlpPolicy", "Pendulum-v1", learning_starts=2_000, batch_size=BATCH,
                policy_kwargs={"net_arch": list(HIDDEN)}, device="cpu", seed=0, verbose=0)
    model.learn(2_000)  # fills the replay buffer; no update before learning_starts
    return lambda: model.train(gradient_steps=1, batch_size=BATCH)


def best_block(stamps: list[float], steps: int) -> float:
    """ms per env step: the best of 3 blocks of `steps` env steps after WARM_STEPS, from the
    times at which each step began."""
    starts = range(WARM_STEPS, WARM_STEPS + 3 * steps, steps)
    return min(stamps[s + steps] - stamps[s] for s in starts) / steps * 1e3


def step_total(steps: int) -> int:
    return WARM_STEPS + 3 * steps + 1  # the last block's end is the next step's start


def rl_runner_step(steps: int, threads: str) -> tuple[float, int]:
    """(ms per env step, torch threads at the end) of rl-run's loop on the sac pendulum preset,
    timed at the start of each of the trainer's feeder-and-update steps."""
    import tempfile

    import torch
    from hydra import compose, initialize_config_module

    from rl_runner import trainer
    stamps: list[float] = []
    learn_once = trainer.Trainer._learn_once

    def timed(self):
        stamps.append(time.perf_counter())
        return learn_once(self)

    trainer.Trainer._learn_once = timed
    total = step_total(steps)
    with initialize_config_module(config_module="rl_runner.conf", version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "algo=sac", "env=pendulum", "seed=0", f"trainer.total_steps={total}",
            f"trainer.eval_every={total}", "trainer.eval_episodes=1", "trainer.progress=false",
            f"trainer.torch_threads={threads}"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer.train(cfg, Path(tmp) / "run")
    return best_block(stamps, steps), torch.get_num_threads()


def sb3_step(steps: int) -> float:
    """ms per env step of SB3's SAC.learn with the preset's settings (RL Zoo: lr 1e-3, the rest
    SB3's defaults, which rl-runner's sac.yaml copies), timed at each env step's callback."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    class Stamps(BaseCallback):
        def __init__(self):
            super().__init__()
            self.stamps: list[float] = []

        def _on_step(self) -> bool:
            self.stamps.append(time.perf_counter())
            return True

    model = SAC("MlpPolicy", "Pendulum-v1", learning_rate=1e-3, learning_starts=100,
                batch_size=BATCH, policy_kwargs={"net_arch": list(HIDDEN)}, device="cpu", seed=0,
                verbose=0)
    callback = Stamps()
    model.learn(step_total(steps), callback=callback)
    return best_block(callback.stamps, steps)


def measure_one(name: str, updates: int) -> tuple[float, int]:
    """(ms per update or env step, torch threads) of one configuration, in this process: the
    best of 3 blocks."""
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits
    if name in ("step-auto", "step-1"):
        return rl_runner_step(updates, name.split("-")[1])
    threads = CONFIGS[name][0]
    torch.set_num_threads(threads)
    threadpool_limits(threads, user_api="blas")
    if name.startswith("step-sb3"):
        return sb3_step(updates), threads
    if name.startswith("matmuls"):
        step = matmul_runner(torch)
    elif name.startswith("sb3"):
        step = sb3_runner(torch)
    else:
        step = rl_runner_runner(name, torch, np)
    for _ in range(20):
        step()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(updates):
            step()
        best = min(best, (time.perf_counter() - start) / updates * 1e3)
    return best, threads


def report(ms: dict[str, list[float]], threads: dict[str, list[int]], command: str) -> str:
    median = {name: statistics.median(v) for name, v in ms.items()}
    macs = sum(k * m * inner * n for k, m, inner, n, _ in matmul_shapes())
    lines = [
        "## SAC update: where the time goes",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} (UTC)",
        f"- Machine: {machine()}",
        "- Versions: " + package_versions({"torch": "torch", "numpy": "numpy",
                                           "stable-baselines3": "stable-baselines3"}),
        f"- Command: `{command}`",
        f"- One gradient step of the speed bar's configuration: {OBS} observations, {ACT} action, "
        f"hidden {HIDDEN[0]}x{HIDDEN[1]}, batch {BATCH}, minibatch sampled from a replay buffer "
        f"in each update. Its matrix products are {macs / 1e6:.0f}M multiply-adds. Each "
        "configuration runs in its own process; ms is the median over rounds of the best of 3 "
        f"blocks of updates, or of env steps for step-* after {WARM_STEPS} warm-up steps "
        f"({len(next(iter(ms.values())))} rounds).",
        "",
        f"| configuration | torch threads | ms per update (step-*: per env step) | "
        f"{macs / 1e6:.0f}M multiply-adds as GFLOP/s | what it is |",
        "|---|---|---|---|---|",
    ]
    for name, (_, what) in CONFIGS.items():
        if name in median:
            gflops = 2 * macs / median[name] / 1e6
            used = "/".join(str(n) for n in sorted(set(threads[name])))
            lines.append(f"| {name} | {used} | {median[name]:.2f} | {gflops:.1f} | {what} |")
    if "sb3-2" in median:
        lines += ["", f"2.5x SB3's update rate on 2 threads would be "
                  f"{median['sb3-2'] / 2.5:.2f} ms per update, before the env step, "
                  "acting and evaluation."]
    lines += step_summary(median, threads, ms)
    return "\n".join(lines)


def step_summary(median: dict[str, float], threads: dict[str, list[int]],
                 ms: dict[str, list[float]]) -> list[str]:
    """The floor (matmuls-N at the thread count auto picked), the whole env step, their ratio
    (and its range over the rounds, each step against its own round's floor: on a VM whose
    speed moves by 20% from minute to minute the ratio of medians alone hides how far it
    strays), and the step's speed against SB3's."""
    out = []
    for name in ("step-auto", "step-1"):
        if name not in median:
            continue
        n = statistics.mode(threads[name])
        floor = median.get(f"matmuls-{n}")
        step = median[name]
        out += ["", f"Whole env step, {name} ({n} thread(s)): {step:.2f} ms"]
        if floor is not None:
            rounds = [a / b for a, b in zip(ms[name], ms[f"matmuls-{n}"])]
            out[-1] += (f"; floor matmuls-{n} {floor:.2f} ms; step / floor {step / floor:.2f} "
                        f"(per round {min(rounds):.2f}-{max(rounds):.2f}; bar: <= 1.25)")
        for sb3 in ("step-sb3-1", "step-sb3-2"):
            if sb3 in median:
                out[-1] += (f"; {sb3} {median[sb3]:.2f} ms, rl-runner's steps/s "
                            f"{median[sb3] / step:.2f}x (bar: >= 2.5)")
        out[-1] += "."
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=100,
                        help="updates (step-*: env steps) per timed block")
    parser.add_argument("--configs", default=",".join(CONFIGS),
                        help="comma-separated, from: " + ", ".join(CONFIGS))
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # measure one configuration and print
    args = parser.parse_args()
    if args.one:
        print(*measure_one(args.one, args.updates))
        return
    names = args.configs.split(",")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration {unknown[0]!r}; allowed: {', '.join(CONFIGS)}")
    ms: dict[str, list[float]] = {n: [] for n in names}
    threads: dict[str, list[int]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            out = subprocess.run([sys.executable, __file__, "--one", name, "--updates",
                                  str(args.updates)], capture_output=True, text=True, cwd=ROOT)
            if out.returncode != 0:
                sys.exit(f"{name} failed: {out.stderr.strip()[-500:]}")
            value, used = out.stdout.strip().splitlines()[-1].split()
            ms[name].append(float(value))
            threads[name].append(int(used))
            print(f"round {r + 1}: {name}: {ms[name][-1]:.2f} ms, {used} thread(s)", flush=True)
    command = "python scripts/sac_update_speed.py" + "".join(
        f" {a}" for a in sys.argv[1:])
    body = report(ms, threads, command)
    replace_section(args.out, *SECTION, body)
    print(body)


if __name__ == "__main__":
    main()
