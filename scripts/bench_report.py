"""The markdown of scripts/benchmark.py: one `speed-<task>` section of docs/benchmarks.md per task,
and the `speed-method` section saying how every one of them is measured."""
from __future__ import annotations

import os
import statistics
from pathlib import Path

from bench_common import machine, package_versions
from bench_peers import PEERS
from bench_tasks import COMMON, TARGETS, TASKS, peer_description


def markers(section: str) -> tuple[str, str]:
    return f"<!-- {section}:start -->", f"<!-- {section}:end -->"


def task_section(task: str, device: str = "cpu") -> str:
    """Each task (and device other than the CPU) has its own section, replaced only when that
    task is measured again there."""
    return f"speed-{task}" + ("" if device == "cpu" else f"-{device.replace(':', '')}")


def device_name(device: str) -> str:
    """"cpu", or "cuda (NVIDIA H100 80GB HBM3)": the GPU a section's numbers come from."""
    if device == "cpu":
        return "cpu"
    import torch

    return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"


def cnn_precision(algo: str, device: str, extra: tuple = ()) -> str:
    """What rl-runner's CNN computes in for these runs: algo.precision=auto resolved as the
    algorithm resolves it (base.resolve_precision), on this machine."""
    import torch
    from hydra.utils import get_class

    from rl_runner.algos import base

    if any(e.startswith("algo.precision=") for e in extra):
        return "rl-runner as its label says; SB3 float32"
    bf16_ok = get_class(TARGETS[algo]).bf16_ok
    got = base.resolve_precision("auto", "cnn", torch.device(device), bf16_ok, algo)
    return auto_precision(got, device, "bfloat16 autocast", f"{algo} keeps float32")


def update_precision(task, device: str, extra: tuple = ()) -> str | None:
    """What td3's and ddpg's update products run in for these runs (base.
    resolve_update_precision on this machine); None for the other algorithms."""
    import torch

    from rl_runner.algos import base

    if task.algo_name not in ("td3", "ddpg"):
        return None
    keys = ("algo.precision=", "algo.hidden_sizes=", "algo.batch_size=")
    if any(e.startswith(keys) for e in extra):  # the label's overrides decide it
        return "rl-runner as its label's overrides make it (each run's train.log says); SB3 float32"
    macs = base.hidden_macs(task.algo["hidden_sizes"], task.algo["batch_size"])
    got = base.resolve_update_precision("auto", torch.device(device), macs, task.algo_name)
    return auto_precision(got, device, "bfloat16 hidden-to-hidden products",
                          "hidden-to-hidden products under 2^24 multiply-adds")


def auto_precision(got: str, device: str, bf16_what: str, fp32_why: str) -> str:
    """The precision line for algo.precision=auto resolved to `got` on this machine: what runs
    in bfloat16, or why float32 (a GPU, a CPU without the units, or `fp32_why`)."""
    from rl_runner.algos import base

    units = base.cpu_bf16_units() if device == "cpu" else None
    if got == "bf16":
        how = f"{bf16_what} (this CPU has {units})"
    elif device != "cpu":
        how = "float32 on a GPU"
    elif units is None:
        how = "float32 (no bfloat16 units on this CPU)"
    else:
        how = f"float32 ({fp32_why})"
    return f"rl-runner algo.precision=auto: {how}; SB3 float32"


METHOD_SECTION = "speed-method"


VERSION_PACKAGES = {"torch": "torch", "gymnasium": "gymnasium", "numpy": "numpy",
                    "rl_runner": "rl-runner", "stable-baselines3": "stable-baselines3",
                    "sb3-contrib": "sb3-contrib"}

# How the numbers are made; written under the tables so a reader never has to open this script.
METHOD = """
How it is measured:

- Each run is a fresh Python process; the runners alternate (rl-runner, SB3, ...) for every task
  and seed, so drifts in machine load hit all of them alike.
- env steps/s = env steps / loop wall s, the training loop only: no interpreter start-up, imports,
  env or model construction (those are in process s, the whole subprocess). rl-runner: `sps` and
  `wall_seconds` from its results.json. SB3: wall clock of `model.learn()` plus the trailing
  evaluation; SB3's own fps log is not used. load before / after: the 1-minute load average
  around each run; well above the run's own thread count means another process competed for the
  CPU, and that run's speed should not be trusted.
- Both loops include the same evaluation work and nothing is subtracted: rl-runner evaluates
  (trainer.eval_episodes) episodes after the update that reaches each multiple of its
  eval interval (trainer.eval_every; 0 = a tenth of the budget; both listed above per task). The
  SB3 runs do the same at the same steps from a callback (`_on_rollout_start`, i.e. after the
  previous update) plus once after `learn()`, with rl-runner's own `Evaluator`.
- Eval return: the evaluation after the final update, mean ± std over its episodes on a separate
  vector env seeded seed + 10000 (`rl_runner.evaluation.Evaluator` for both; SB3 acts through
  `model.predict(obs, deterministic=<trainer.eval_deterministic>)`, on observations normalized by
  its VecNormalize's statistics where it trains with one). Both act as rl-runner's preset says:
  the mode, or sampled actions on Atari (as the RL Zoo evaluates it; runs of this benchmark
  before 2026-12-06 scored SB3's Atari model with its mode and rl-runner's with samples).
  Atari: whole games at the real (unclipped) score on both sides, the same number of games;
  SB3's model plays them in its own training wrappers (its AtariWrapper under Monitor, whose
  episodes are whole games), not in rl-runner's Evaluator.
- Final score (`--final-episodes N`; 100 on Atari by default): after the run, outside the timed
  loop, each side's final model plays N more episodes from the same seeds (rl-runner: `rl-eval
  checkpoint=last episodes=N`; SB3: the evaluator above), and these are the return columns. At
  100k Breakout steps one game's score has a std of 2.2-3.2 for either library's models, so 10
  games leave about ±0.9 on a seed's mean: runs of this benchmark before 2026-12-06 compared
  Atari returns over 10 games.
- Differences that remain: rl-runner also writes TensorBoard events and checkpoints (last.pt, and
  best.pt on improvement, at each evaluation) inside its loop, while the SB3 runs log nothing
  (verbose=0, no tensorboard_log); rl-runner steps a gymnasium SyncVectorEnv ("rl-runner
  (envpool)" rows: EnvPool's C++ envs, env.vectorization=envpool; evaluation stays on gymnasium's
  env), SB3 a DummyVecEnv of Monitor-wrapped envs (both in one process); linear schedules are evaluated one rollout apart
  (rl-runner at the progress before the rollout just collected, SB3 after it); rl-runner uses
  trainer.torch_threads (default auto: 1, or every usable core for sac's big matmuls; it also
  caps numpy's BLAS threads),
  SB3 torch's default (one thread per core, numpy's BLAS likewise) unless the runner name gives a
  thread count.
"""




def versions() -> str:
    return package_versions(VERSION_PACKAGES)


def fmt_return(r: dict) -> str:
    return f"{r['eval_return_mean']:.1f} ± {r['eval_return_std']:.1f}"


def fmt_load(r: dict) -> str:
    if r.get("kept") and r.get("load"):
        return f"{r['load'][0]:.2f} / {r['load'][1]:.2f} (earlier run, ended {r['kept']})"
    if r.get("kept"):
        return f"earlier run, ended {r['kept']}"
    return f"{r['load'][0]:.2f} / {r['load'][1]:.2f}"


def fmt_seconds(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds:.1f}"


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def markdown(rows: list[dict], runners: list[tuple[str, int | None]], args, command: str,
             started: str, loads: tuple, plan: dict, envpool_alone: float | None = None) -> str:
    """One task's section; `envpool_alone`: EnvPool's own stepping rate for the task's envs
    (scripts/bench_envpool.py), beside the envpool runner's loop."""
    ok = [r for r in rows if r["status"] == "completed"]
    name = next(iter(plan))
    task = TASKS[name]
    algo, peer = task.algo_name, PEERS[task.algo_name]
    device = getattr(args, "device", "cpu")
    start, end = markers(task_section(name, device))
    on = "" if device == "cpu" else f" on {device_name(device)}"
    lines = [start, f"## {algo.upper()} speed on {task.env}{on}: rl-runner vs {peer}", "",
             f"- Date: {started} (UTC)" + ("; the rows marked \"earlier run\" were kept "
                                          "from earlier runs of the same code (--reuse)"
                                          if any(r.get("kept") for r in rows) else ""),
             f"- Machine: {machine()}; 1-min load average {loads[0]:.2f} at start, "
             f"{loads[1]:.2f} at end",
             f"- Versions: {versions()}",
             f"- Command: `{command}`",
             f"- rl-runner runs: `rl-run algo={algo} env={task.env} seed=<seed> "
             f"trainer.total_steps=<env steps> trainer.device={device} trainer.progress=false "
             "hydra.run.dir=<tmp>`" + ("; \"rl-runner (<backend>)\" rows add "
                                       "env.vectorization=<backend>" if any(
                                           r["runner"].startswith("rl-runner (") for r in rows)
                                       else ""),
             f"- {peer} runs (\"sb3\" below): {peer_description(task)} with "
             f"device=\"{device}\", then `model.learn(<env steps>)`", ""]
    if any(k in os.environ for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        lines.insert(-1, "- Environment: " + ", ".join(
            f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
            if k in os.environ))
    lines += ["| task | seed | runner | torch threads | env steps | loop wall s | env steps/s | "
              "process s | load before / after | final eval return (mean ± std) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "completed":
            lines.append(f"| {r['task']} | {r['seed']} | {r['runner']} | | | | | "
                         f"{fmt_seconds(r['process_seconds'])} | {fmt_load(r)} | "
                         f"{r['status']}: {r.get('error', '')[:120]} |")
            continue
        lines.append(f"| {r['task']} | {r['seed']} | {r['runner']} | {r['torch_threads']} | "
                     f"{r['env_steps']} | {r['loop_seconds']:.1f} | {r['sps']:.0f} | "
                     f"{fmt_seconds(r['process_seconds'])} | {fmt_load(r)} | {fmt_return(r)} |")
    lines += ["", "rl-runner against each SB3 configuration (means over seeds; "
              "± is the std over seeds when there are several):", "",
              "| task | compared with | rl-runner steps/s | SB3 steps/s | "
              "speed ratio (rl-runner / SB3) | rl-runner return | SB3 return | "
              "return difference (rl-runner − SB3) |",
              "|---|---|---|---|---|---|---|---|"]
    ours = [label for label, _ in runners if label.startswith("rl-runner")]
    peers = [label for label, _ in runners if not label.startswith("rl-runner")]
    pairs = [(name, own, label) for name in plan for own in ours for label in peers]
    for name, own, label in pairs:
        mine = [r for r in ok if r["task"] == name and r["runner"] == own]
        theirs = [r for r in ok if r["task"] == name and r["runner"] == label]
        compared = label if len(ours) == 1 else f"{own} vs {label}"
        if not mine or not theirs:
            lines.append(f"| {name} | {compared} | | | | | | (missing runs) |")
            continue
        sps_a = statistics.mean(r["sps"] for r in mine)
        sps_b = statistics.mean(r["sps"] for r in theirs)
        ret_a = [r["eval_return_mean"] for r in mine]
        ret_b = [r["eval_return_mean"] for r in theirs]
        lines.append(f"| {name} | {compared} | {sps_a:.0f} | {sps_b:.0f} | {sps_a / sps_b:.2f} | "
                     f"{mean_std(ret_a)} | {mean_std(ret_b)} | "
                     f"{statistics.mean(ret_a) - statistics.mean(ret_b):+.1f} |")
    pooled = [r["sps"] for r in ok if r["runner"] == "rl-runner (envpool)"]
    if envpool_alone and pooled:
        loop = statistics.mean(pooled)
        lines += ["", f"EnvPool alone on these envs (scripts/bench_envpool.py: random actions, "
                  f"no policy, a thread per core, the faster of before and after the runs): "
                  f"{envpool_alone:.0f} env "
                  f"steps/s; rl-runner (envpool)'s loop ran at {loop:.0f}, "
                  f"{100 * loop / envpool_alone:.0f}% of it."]
    lines += ["", f"Hyperparameters (RL Zoo `hyperparams/{algo}.yml` unless the line says "
              "otherwise; the same for both libraries; checked against rl-runner's composed "
              "config before and after each run):", ""]
    base = COMMON["ppo_cnn"] if task.atari else COMMON[algo]
    common = {k: v for k, v in base.items() if k in task.algo and task.algo[k] == v}
    for name, (steps, every, episodes, deterministic, final) in plan.items():
        t = TASKS[name]
        hp = ", ".join(f"{k} {v}" for k, v in t.algo.items() if k not in common)
        lines.append(f"- {name} ({t.env_id}): {t.n_envs} envs, {steps} env steps "
                     f"({t.total_steps} × {args.steps_scale:g}, whole updates), {hp}; "
                     f"evaluation every {every} env steps, {episodes} episodes, "
                     f"{'the mode' if deterministic else 'sampled actions'} on both sides"
                     + (f"; the return columns: the final model scored again over {final} "
                        "episodes after the run (the same seeds on both sides)" if final else "")
                     + (f"; not the RL Zoo's: {t.from_zoo}" if t.from_zoo else ""))
    if task.atari:
        lines.append(f"- env: env.atari {task.env_cfg['atari']} (SB3: AtariWrapper's defaults and "
                     "VecFrameStack(4)); evaluation: whole games at the real score, rl-runner in "
                     "its Evaluator (training=False), SB3's model in its own wrappers (Monitor's "
                     "game scores), the same number of games")
    if task.atari:
        lines.append(f"- precision: {cnn_precision(algo, device, getattr(args, 'extra', ()))}")
    precision = update_precision(task, device, getattr(args, "extra", ()))
    if precision:
        lines.append(f"- precision: {precision}")
    if task.peer_policy:
        lines.append(f"- SB3 only (the Zoo's): policy_kwargs {task.peer_policy}")
    lines.append(f"- both: {', '.join(f'{k} {v}' for k, v in common.items())}")
    lines += ["", "How this is measured: see the end of this file.", end]
    return "\n".join(lines) + "\n"


def method_section() -> str:
    start, end = markers(METHOD_SECTION)
    return "\n".join([start, "## How the speed sections are measured", "", METHOD.strip(),
                      end]) + "\n"


def write_section(path: Path, name: str, section: str, before: str | None = None) -> None:
    """Replace the marked section `name` in `path`, leaving other sections untouched; a new one
    goes before section `before` when that exists, else at the end."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else (
        "# Benchmarks\n\nWritten by `scripts/benchmark.py` and `scripts/returns.py`; each section "
        "is replaced when its benchmark runs again.\n\n")
    start, end = markers(name)
    if start in text and end in text and text.index(start) < text.index(end):
        text = text[:text.index(start)] + section.rstrip("\n") + text[text.index(end) + len(end):]
    elif before and markers(before)[0] in text:
        at = text.index(markers(before)[0])
        text = text[:at] + section.rstrip("\n") + "\n\n" + text[at:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text if text.endswith("\n") else text + "\n")


