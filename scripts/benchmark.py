"""Speed and final return: rl-runner against stable-baselines3 / sb3-contrib, same hyperparameters.

Every run is a fresh Python process (imports, torch threads and allocator state never carry over),
and the runners alternate (rl-runner, SB3, rl-runner, SB3, ...) for each task and seed, so a change
in machine load hits all of them alike. Each task's results replace its own `speed-<task>`
section of docs/benchmarks.md (other tasks' sections stay), so tasks can be measured separately.

    python scripts/benchmark.py                                   # PPO on CartPole and LunarLander
    python scripts/benchmark.py --tasks ppo-cartpole --steps-scale 0.05   # a quick check
    python scripts/benchmark.py --tasks trpo-cartpole,sac-pendulum    # TRPO and SAC
    python scripts/benchmark.py --seeds 0,1,2 --sb3-one-thread    # + SB3 at one torch thread
    python scripts/benchmark.py --seeds 0,1,2 --runs-dir runs --reuse  # keep runs already done
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine, package_versions, run_logged  # noqa: E402
from bench_tasks import COMMON, PEERS, TARGETS, TASKS, Task, peer_model  # noqa: E402


def markers(section: str) -> tuple[str, str]:
    return f"<!-- {section}:start -->", f"<!-- {section}:end -->"


def task_section(task: str) -> str:
    """Each task has its own section, replaced only when that task is measured again."""
    return f"speed-{task}"


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
  (trainer.eval_episodes) deterministic episodes after the update that reaches each multiple of its
  eval interval (trainer.eval_every; 0 = a tenth of the budget; both listed above per task). The
  SB3 runs do the same at the same steps from a callback (`_on_rollout_start`, i.e. after the
  previous update) plus once after `learn()`, with rl-runner's own `Evaluator`.
- Eval return: the evaluation after the final update, mean ± std over its episodes on a separate
  vector env seeded seed + 10000 (`rl_runner.evaluation.Evaluator` for both; SB3 acts through
  `model.predict(obs, deterministic=True)`).
- Differences that remain: rl-runner also writes TensorBoard events and checkpoints (last.pt, and
  best.pt on improvement, at each evaluation) inside its loop, while the SB3 runs log nothing
  (verbose=0, no tensorboard_log); rl-runner steps a gymnasium SyncVectorEnv, SB3 a DummyVecEnv of
  Monitor-wrapped envs (both in one process); linear schedules are evaluated one rollout apart
  (rl-runner at the progress before the rollout just collected, SB3 after it); rl-runner uses
  trainer.torch_threads (default auto: 1, or every usable core for sac's big matmuls; it also
  caps numpy's BLAS threads),
  SB3 torch's default (one thread per core, numpy's BLAS likewise) unless the runner name gives a
  thread count.
"""


def budget(task: Task, scale: float) -> int:
    """The scaled budget rounded down to whole rollouts (at least one), as rl-runner's trainer
    does; both libraries then run exactly this many env steps."""
    return max(task.step_size, int(task.total_steps * scale) // task.step_size * task.step_size)


# ---- rl-runner ---------------------------------------------------------------------------------
def rl_run_command() -> list[str]:
    script = Path(sys.executable).parent / "rl-run"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rl_runner.cli"]


def rl_run_overrides(task: Task, seed: int, steps: int) -> list[str]:
    return [f"algo={task.algo_name}", f"env={task.env}", f"seed={seed}",
            f"trainer.total_steps={steps}",
            "trainer.progress=false"]


def rl_runner_config(task: Task, steps: int) -> dict:
    """rl-runner's composed config for this task (`rl-run ... --cfg job`), without training."""
    import yaml  # PyYAML comes with omegaconf

    proc = subprocess.run([*rl_run_command(), *rl_run_overrides(task, 0, steps), "--cfg", "job"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"benchmark: rl-run cannot compose algo={task.algo_name} env={task.env}:\n"
                 f"{proc.stderr}")
    return yaml.safe_load(proc.stdout)


def config_mismatches(task: Task, cfg: dict) -> list[str]:
    """Where rl-runner's composed config differs from the hyperparameters SB3 is given."""
    expected = {"env.id": task.env_id, "env.n_envs": task.n_envs, "env.vectorization": "sync",
                "algo._target_": TARGETS[task.algo_name],
                **{f"algo.{k}": v for k, v in task.algo.items()}}
    out = []
    for key, want in expected.items():
        group, name = key.split(".", 1)
        got = cfg.get(group, {}).get(name, "<missing>")
        if got != want and not (isinstance(want, float) and isinstance(got, (int, float))
                                and abs(got - want) <= 1e-12 * abs(want)):
            out.append(f"{key}={got!r} (SB3 gets {want!r})")
    return out


def rl_runner_dir(task: Task, seed: int, work: Path) -> Path:
    return work / f"rl-runner_{task.key}_s{seed}"


def run_rl_runner(task: Task, seed: int, steps: int, work: Path) -> dict:
    run_dir = rl_runner_dir(task, seed, work)
    log = work / f"rl-runner_{task.key}_s{seed}.log"
    cmd = [*rl_run_command(), *rl_run_overrides(task, seed, steps), f"hydra.run.dir={run_dir}"]
    proc_seconds, error = run_logged(cmd, log, work)
    if error or not (run_dir / "results.json").exists():
        return {"status": "failed", "error": error or "no results.json", "process_seconds":
                proc_seconds}
    return read_rl_runner(task, run_dir, proc_seconds)


def read_rl_runner(task: Task, run_dir: Path, proc_seconds: float | None) -> dict:
    res = json.loads((run_dir / "results.json").read_text())
    import yaml

    cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    return {"status": res["status"], "env_steps": res["env_steps"],
            "loop_seconds": res["wall_seconds"], "sps": res["sps"],
            "eval_return_mean": res["eval_return_mean"], "eval_return_std": res["eval_return_std"],
            "eval_episodes": res["eval_episodes"],
            "torch_threads": res.get("torch_threads", cfg["trainer"]["torch_threads"]),
            "process_seconds": proc_seconds, "mismatches": config_mismatches(task, cfg)}


# ---- stable-baselines3 -------------------------------------------------------------------------
def sb3_result(task: Task, seed: int, threads: int | None, work: Path) -> Path:
    return work / f"sb3{threads or ''}_{task.key}_s{seed}.json"


def run_sb3(task: Task, seed: int, steps: int, threads: int | None, eval_every: int,
            eval_episodes: int, work: Path) -> dict:
    out = sb3_result(task, seed, threads, work)
    tag = out.stem
    spec = {"task": task.key, "seed": seed, "steps": steps, "threads": threads,
            "eval_every": eval_every, "eval_episodes": eval_episodes, "out": str(out)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--sb3-child", json.dumps(spec)]
    proc_seconds, error = run_logged(cmd, work / f"{tag}.log", work)
    if error or not out.exists():
        return {"status": "failed", "error": error or "no result", "process_seconds": proc_seconds}
    return {**json.loads(out.read_text()), "process_seconds": proc_seconds}


def sb3_child(spec: dict) -> None:
    """Runs inside its own process: train the peer model, timing learn() and the evaluations in
    it."""
    import torch
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    from rl_runner.evaluation import Evaluator

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    task, seed, steps = TASKS[spec["task"]], spec["seed"], spec["steps"]
    model = peer_model(task, make_vec_env(task.env_id, n_envs=task.n_envs, seed=seed), seed,
                       torch)
    evaluator = Evaluator(task.env_id, spec["eval_episodes"], seed + 10_000)
    # the same schedule as rl-runner's Trainer: after the update that reaches next_eval
    state = {"next": spec["eval_every"], "last_step": -1, "last": None, "count": 0}

    def evaluate(step: int, force: bool = False) -> None:
        if step < state["next"] and not force:
            return
        state["last"] = evaluator.run(lambda obs: model.predict(obs, deterministic=True)[0])
        state["last_step"], state["count"] = step, state["count"] + 1
        if step >= state["next"]:
            state["next"] += spec["eval_every"] * max(
                1, (step - state["next"]) // spec["eval_every"] + 1)

    class PeriodicEval(BaseCallback):
        def _on_rollout_start(self) -> None:  # the previous rollout's update is done by now
            if self.model.num_timesteps > 0:
                evaluate(self.model.num_timesteps)

        def _on_step(self) -> bool:
            return True

    start = time.perf_counter()
    model.learn(total_timesteps=steps, callback=PeriodicEval())
    evaluate(model.num_timesteps)
    if state["last_step"] != model.num_timesteps:
        evaluate(model.num_timesteps, force=True)
    seconds = time.perf_counter() - start
    evaluator.close()
    result = {"status": "completed", "env_steps": int(model.num_timesteps),
              "loop_seconds": seconds, "sps": model.num_timesteps / seconds,
              "eval_return_mean": state["last"]["return_mean"],
              "eval_return_std": state["last"]["return_std"],
              "eval_episodes": state["last"]["episodes"], "evaluations": state["count"],
              "torch_threads": torch.get_num_threads()}
    Path(spec["out"]).write_text(json.dumps(result, indent=2) + "\n")


def kept_run(task: Task, seed: int, runner: str, threads: int | None, work: Path) -> dict | None:
    """A completed run of this task, seed and runner already in `work` (--reuse), else None."""
    if runner == "rl-runner":
        where = rl_runner_dir(task, seed, work) / "results.json"
    else:
        where = sb3_result(task, seed, threads, work)
    if not where.exists():
        return None
    row = row_file(task, seed, runner, work)
    if row.exists():  # written by the benchmark that ran it: has its load and process time
        r = json.loads(row.read_text())
    elif runner == "rl-runner":
        r = read_rl_runner(task, where.parent, None)
    else:
        r = {**json.loads(where.read_text()), "process_seconds": None}
    if r["status"] != "completed":
        return None
    ended = datetime.datetime.fromtimestamp(where.stat().st_mtime, datetime.timezone.utc)
    return {**r, "kept": ended.strftime("%Y-%m-%d %H:%M")}


def row_file(task: Task, seed: int, runner: str, work: Path) -> Path:
    return work / f"row_{task.key}_s{seed}_{runner.replace(' ', '_')}.json"


# ---- running and reporting ---------------------------------------------------------------------
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
             started: str, loads: tuple, plan: dict) -> str:
    ok = [r for r in rows if r["status"] == "completed"]
    name = next(iter(plan))
    task = TASKS[name]
    algo, peer = task.algo_name, PEERS[task.algo_name]
    start, end = markers(task_section(name))
    peer_class = {"ppo": "PPO", "trpo": "TRPO", "sac": "SAC"}[algo]
    lines = [start, f"## {algo.upper()} speed on {task.env}: rl-runner vs {peer}", "",
             f"- Date: {started} (UTC)" + ("; the rows marked \"earlier run\" were kept "
                                          "from earlier runs of the same code (--reuse)"
                                          if any(r.get("kept") for r in rows) else ""),
             f"- Machine: {machine()}; 1-min load average {loads[0]:.2f} at start, "
             f"{loads[1]:.2f} at end",
             f"- Versions: {versions()}",
             f"- Command: `{command}`",
             f"- rl-runner runs: `rl-run algo={algo} env={task.env} seed=<seed> "
             f"trainer.total_steps=<env steps> trainer.progress=false hydra.run.dir=<tmp>`",
             f"- {peer} runs (\"sb3\" below): `{peer_class}(\"MlpPolicy\", make_vec_env(<env id>, "
             "n_envs, seed=<seed>), <hyperparameters below>, seed=<seed>, device=\"cpu\", "
             "verbose=0)`, then `model.learn(<env steps>)`", ""]
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
    for name in plan:
        mine = [r for r in ok if r["task"] == name and r["runner"] == "rl-runner"]
        for label, _ in runners[1:]:
            theirs = [r for r in ok if r["task"] == name and r["runner"] == label]
            if not mine or not theirs:
                lines.append(f"| {name} | {label} | | | | | | (missing runs) |")
                continue
            sps_a = statistics.mean(r["sps"] for r in mine)
            sps_b = statistics.mean(r["sps"] for r in theirs)
            ret_a = [r["eval_return_mean"] for r in mine]
            ret_b = [r["eval_return_mean"] for r in theirs]
            lines.append(f"| {name} | {label} | {sps_a:.0f} | {sps_b:.0f} | {sps_a / sps_b:.2f} | "
                         f"{mean_std(ret_a)} | {mean_std(ret_b)} | "
                         f"{statistics.mean(ret_a) - statistics.mean(ret_b):+.1f} |")
    lines += ["", f"Hyperparameters (RL Zoo `hyperparams/{algo}.yml` unless the line says "
              "otherwise; the same for both libraries; checked against rl-runner's composed "
              "config before and after each run):", ""]
    for name, (steps, every, episodes) in plan.items():
        t = TASKS[name]
        hp = ", ".join(f"{k} {v}" for k, v in t.algo.items() if k not in COMMON[algo])
        lines.append(f"- {name} ({t.env_id}): {t.n_envs} envs, {steps} env steps "
                     f"({t.total_steps} × {args.steps_scale:g}, whole updates), {hp}; "
                     f"evaluation every {every} env steps, {episodes} episodes"
                     + (f"; not the RL Zoo's: {t.from_zoo}" if t.from_zoo else ""))
    lines.append(f"- both: {', '.join(f'{k} {v}' for k, v in COMMON[algo].items())}")
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


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="benchmark.py", description="speed and final return, rl-runner vs "
        "stable-baselines3 / sb3-contrib with the same hyperparameters; writes one section of "
        "docs/benchmarks.md per task")
    p.add_argument("--tasks", default="ppo-cartpole,ppo-lunarlander",
                   help=f"comma list of {', '.join(TASKS)} (default: all)")
    p.add_argument("--seeds", default="0", help="comma list of integer seeds (default: 0)")
    p.add_argument("--steps-scale", type=float, default=1.0,
                   help="multiplies every task's env-step budget, e.g. 0.05 for a quick check")
    p.add_argument("--sb3-threads", type=int, default=None,
                   help="torch.set_num_threads for the SB3 runs (default: torch's default, as "
                   "an RL Zoo user runs it)")
    p.add_argument("--sb3-one-thread", action="store_true",
                   help="add a third runner, SB3 with torch.set_num_threads(1) (rl-runner "
                        "uses one thread for all but sac's big matmuls)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                   help="markdown file whose speed-<task> sections are replaced "
                   "(default: %(default)s)")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="keep run directories and logs here (default: a temporary directory)")
    p.add_argument("--reuse", action="store_true",
                   help="with --runs-dir: take the runs already completed there (an interrupted "
                   "benchmark, or more seeds added later, on unchanged code) instead of running "
                   "them again; the table says which runs were kept and when they ended")
    args = p.parse_args(argv)
    args.task_list = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in args.task_list if t not in TASKS]
    if unknown or not args.task_list:
        p.error(f"unknown task(s) {', '.join(unknown) or '(none)'}; choices: {', '.join(TASKS)}")
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds must be a comma list of integers, not {args.seeds!r}")
    if not args.seed_list:
        p.error("--seeds is empty")
    if not args.steps_scale > 0:
        p.error("--steps-scale must be positive")
    if args.reuse and args.runs_dir is None:
        p.error("--reuse needs --runs-dir (the directory with the earlier runs)")
    if args.sb3_threads is not None and args.sb3_threads < 1:
        p.error("--sb3-threads must be at least 1")
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["--sb3-child"]:
        sb3_child(json.loads(argv[1]))
        return 0
    args = parse_args(argv)
    for peer in sorted({PEERS[TASKS[name].algo_name] for name in args.task_list}):
        try:
            metadata.version(peer)
        except metadata.PackageNotFoundError:
            sys.exit(f"benchmark: {peer} is not installed; pip install -c constraints.txt "
                     "-e '.[bench]' (or make bench)")
    label = f"sb3 ({args.sb3_threads} thread{'s' * (args.sb3_threads != 1)})" \
        if args.sb3_threads else "sb3"
    runners: list[tuple[str, int | None]] = [("rl-runner", None), (label, args.sb3_threads)]
    if args.sb3_one_thread and args.sb3_threads != 1:
        runners.append(("sb3 (1 thread)", 1))

    # compose rl-runner's config once per task before any training: a preset that no longer
    # matches what SB3 gets would make the whole comparison meaningless
    plan = {}
    for name in args.task_list:
        task, steps = TASKS[name], budget(TASKS[name], args.steps_scale)
        cfg = rl_runner_config(task, steps)
        bad = config_mismatches(task, cfg)
        if bad:
            sys.exit(f"benchmark: rl-runner's config for {name} differs from what SB3 would get: "
                     f"{'; '.join(bad)}. Update conf/tuned/{task.algo_name}_{task.env}.yaml or "
                     f"TASKS in scripts/bench_tasks.py so that both sides agree.")
        eval_every = cfg["trainer"]["eval_every"] or max(1, steps // 10)
        plan[name] = (steps, eval_every, cfg["trainer"]["eval_episodes"])

    exe = os.path.relpath(sys.executable) if Path(sys.executable).is_relative_to(Path.cwd()) \
        else "python"
    command = shlex.join([exe, os.path.relpath(Path(__file__).resolve()), *argv])
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    load_start = os.getloadavg()[0]
    total = len(plan) * len(args.seed_list) * len(runners)
    print(f"benchmark: {total} runs ({', '.join(r for r, _ in runners)}) on "
          f"{', '.join(f'{n} {s[0]} steps' for n, s in plan.items())}; seeds {args.seeds}",
          flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rl-bench-") as tmp:
        work = args.runs_dir.resolve() if args.runs_dir else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name, (steps, eval_every, eval_episodes) in plan.items():
            for seed in args.seed_list:
                for runner, threads in runners:
                    load = os.getloadavg()[0]
                    kept = kept_run(TASKS[name], seed, runner, threads, work) \
                        if args.reuse else None
                    if kept:
                        r = kept
                    elif runner == "rl-runner":
                        r = run_rl_runner(TASKS[name], seed, steps, work)
                    else:
                        r = run_sb3(TASKS[name], seed, steps, threads, eval_every, eval_episodes,
                                    work)
                    r.update(task=name, seed=seed, runner=runner)
                    if not kept:  # a new run: its row is kept for a later --reuse
                        r.update(load=(load, os.getloadavg()[0]))
                        row_file(TASKS[name], seed, runner, work).write_text(json.dumps(r))
                    if r["status"] == "completed" and r["env_steps"] != steps:
                        r.update(status="failed", error=f"ran {r['env_steps']} env steps, "
                                 f"expected {steps}")
                    if r.get("mismatches"):
                        r.update(status="failed", error="config changed during the benchmark: "
                                 + "; ".join(r["mismatches"]))
                    rows.append(r)
                    where = f"[{len(rows)}/{total}] {name} seed {seed} {runner}" + (
                        f" (kept, ended {r['kept']}):" if r.get("kept") else ":")
                    if r["status"] == "completed":
                        print(f"{where} {r['env_steps']} env steps in {r['loop_seconds']:.1f} s "
                              f"({r['sps']:.0f} steps/s; "
                              f"process {fmt_seconds(r['process_seconds'])} s, "
                              f"{r['torch_threads']} torch threads), eval return "
                              f"{fmt_return(r)}", flush=True)
                    else:
                        print(f"{where} {r['status']}: {r.get('error')}", flush=True)
    loads = (load_start, os.getloadavg()[0])
    write_section(args.out, METHOD_SECTION, method_section())
    for name in plan:
        section = markdown([r for r in rows if r["task"] == name], runners, args, command,
                           started, loads, {name: plan[name]})
        write_section(args.out, task_section(name), section, before=METHOD_SECTION)
        print()
        print("\n".join(section.splitlines()[1:-1]))
        print(f"benchmark: wrote the {task_section(name)} section of {args.out}")
    return 1 if any(r["status"] != "completed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
