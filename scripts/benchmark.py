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
    python scripts/benchmark.py --tasks ppo-breakout,ppo-hopper --device cuda  # both on the GPU
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import run_logged  # noqa: E402
from bench_envpool import envpool_alone  # noqa: E402
from bench_report import (METHOD_SECTION, fmt_return, fmt_seconds, markdown,  # noqa: E402
                          method_section, task_section, write_section)
from bench_peers import PEERS, peer_model  # noqa: E402
from bench_tasks import (TARGETS, TASKS, Task, peer_env, peer_evaluator,  # noqa: E402
                         peer_policy)


# final score of an Atari task: 100 whole games (ppo breakout at 100k steps: a game's score
# has a std of 2.2-3.2, so 10 games leave +-0.9 on the mean, as large as the gap between seeds)
ATARI_FINAL_EPISODES = 100


def budget(task: Task, scale: float) -> int:
    """The scaled budget rounded down to whole rollouts (at least one), as rl-runner's trainer
    does; both libraries then run exactly this many env steps."""
    return max(task.step_size, int(task.total_steps * scale) // task.step_size * task.step_size)


# ---- rl-runner ---------------------------------------------------------------------------------
def rl_run_command() -> list[str]:
    script = Path(sys.executable).parent / "rl-run"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rl_runner.cli"]


def rl_run_overrides(task: Task, seed: int, steps: int, device: str = "cpu",
                     extra: tuple[str, ...] = (), backend: str = "sync") -> list[str]:
    """`extra`: trainer.* overrides of a caller that times a part only (gpu_check.py);
    `backend`: env.vectorization (the preset's sync is not repeated on the command line)."""
    return [f"algo={task.algo_name}", f"env={task.env}", f"seed={seed}",
            f"trainer.total_steps={steps}", f"trainer.device={device}",
            "trainer.progress=false", *extra,
            *([] if backend == "sync" else [f"env.vectorization={backend}"])]


def backend_of(runner: str) -> str | None:
    """env.vectorization of an rl-runner runner's label ('rl-runner': sync, 'rl-runner
    (envpool)': envpool, with or without '[<extra overrides>]'); None for the peer's runners."""
    if not runner.startswith("rl-runner"):
        return None
    runner = runner.split(" [", 1)[0]
    return runner[len("rl-runner ("):-1] if runner.endswith(")") else "sync"


def extra_of(runner: str) -> tuple[str, ...]:
    """The overrides `--rl-run-extra` added to an rl-runner runner's label."""
    return tuple(runner.split(" [", 1)[1][:-1].split()) if " [" in runner else ()


def runner_label(backend: str, extra: tuple[str, ...] = ()) -> str:
    label = "rl-runner" if backend == "sync" else f"rl-runner ({backend})"
    return f"{label} [{' '.join(extra)}]" if extra else label


def rl_runner_config(task: Task, steps: int) -> dict:
    """rl-runner's composed config for this task (`rl-run ... --cfg job`), without training."""
    import yaml  # PyYAML comes with omegaconf

    proc = subprocess.run([*rl_run_command(), *rl_run_overrides(task, 0, steps), "--cfg", "job"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"benchmark: rl-run cannot compose algo={task.algo_name} env={task.env}:\n"
                 f"{proc.stderr}")
    return yaml.safe_load(proc.stdout)


def config_mismatches(task: Task, cfg: dict, backend: str = "sync") -> list[str]:
    """Where rl-runner's composed config differs from the hyperparameters SB3 is given."""
    expected = {"env.id": task.env_id, "env.n_envs": task.n_envs, "env.vectorization": backend,
                **{f"env.{k}": v for k, v in task.env_cfg.items()},
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


def rl_runner_dir(task: Task, seed: int, work: Path, backend: str = "sync",
                  extra: tuple[str, ...] = ()) -> Path:
    # no '=' or other characters Hydra's override parser takes apart (the path goes to
    # hydra.run.dir=...)
    tag = "".join(f"-{re.sub(r'[^A-Za-z0-9._-]', '_', o)}" for o in extra)
    return work / f"rl-runner{'' if backend == 'sync' else '-' + backend}{tag}_{task.key}_s{seed}"


def run_rl_runner(task: Task, seed: int, steps: int, work: Path, device: str = "cpu",
                  extra: tuple[str, ...] = (), backend: str = "sync") -> dict:
    run_dir = rl_runner_dir(task, seed, work, backend, extra)
    log = work / f"{run_dir.name}.log"
    cmd = [*rl_run_command(), *rl_run_overrides(task, seed, steps, device, extra, backend),
           f"hydra.run.dir={run_dir}"]
    proc_seconds, error = run_logged(cmd, log, work)
    if error or not (run_dir / "results.json").exists():
        return {"status": "failed", "error": error or "no results.json", "process_seconds":
                proc_seconds}
    return read_rl_runner(task, run_dir, proc_seconds, backend)


def read_rl_runner(task: Task, run_dir: Path, proc_seconds: float | None,
                   backend: str = "sync") -> dict:
    res = json.loads((run_dir / "results.json").read_text())
    import yaml

    cfg = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    return {"status": res["status"], "env_steps": res["env_steps"],
            "loop_seconds": res["wall_seconds"], "sps": res["sps"],
            "eval_return_mean": res["eval_return_mean"], "eval_return_std": res["eval_return_std"],
            "eval_episodes": res["eval_episodes"],
            "torch_threads": res.get("torch_threads", cfg["trainer"]["torch_threads"]),
            "device": res.get("device", cfg["trainer"]["device"]),
            "process_seconds": proc_seconds,
            "mismatches": config_mismatches(task, cfg, backend)}


def rl_eval_command() -> list[str]:
    script = Path(sys.executable).parent / "rl-eval"
    return [str(script)] if script.exists() else [sys.executable, "-m", "rl_runner.rl_eval"]


def final_score(r: dict, run_dir: Path, episodes: int, work: Path) -> dict:
    """`r` with its return columns from `rl-eval` of the run's last checkpoint over `episodes`
    episodes (the run's own seeds and actions); the run's last evaluation kept as last_eval.
    `r` itself (not a copy) where episodes is 0 or the row already holds that score."""
    if not episodes or r["status"] != "completed" or r.get("final_episodes") == episodes:
        return r
    cmd = [*rl_eval_command(), f"run={run_dir}", "checkpoint=last", f"episodes={episodes}"]
    _, error = run_logged(cmd, work / f"{run_dir.name}.final.log", work)
    if error:
        return {**r, "status": "failed", "error": f"rl-eval: {error}"}
    res = json.loads((run_dir / "eval.json").read_text())
    return {**r, **scored(res["return_mean"], res["return_std"], res["episodes"]),
            "final_episodes": episodes, "last_eval": last_eval(r)}


def scored(mean: float, std: float, episodes: int) -> dict:
    return {"eval_return_mean": mean, "eval_return_std": std, "eval_episodes": episodes}


def last_eval(r: dict) -> dict:
    return scored(r["eval_return_mean"], r["eval_return_std"], r["eval_episodes"])


# ---- stable-baselines3 -------------------------------------------------------------------------
def sb3_result(task: Task, seed: int, threads: int | None, work: Path) -> Path:
    return work / f"sb3{threads or ''}_{task.key}_s{seed}.json"


def run_sb3(task: Task, seed: int, steps: int, threads: int | None, eval_every: int,
            eval_episodes: int, work: Path, device: str = "cpu",
            deterministic: bool = True, final_episodes: int = 0) -> dict:
    out = sb3_result(task, seed, threads, work)
    tag = out.stem
    spec = {"task": task.key, "seed": seed, "steps": steps, "threads": threads,
            "eval_every": eval_every, "eval_episodes": eval_episodes, "out": str(out),
            "device": device, "eval_deterministic": deterministic,
            "final_episodes": final_episodes}
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

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    task, seed, steps = TASKS[spec["task"]], spec["seed"], spec["steps"]
    env = peer_env(task, seed)
    model = peer_model(task, env, seed, torch, steps, spec.get("device", "cpu"))
    act = peer_policy(task, model, env, spec.get("eval_deterministic", True))
    evaluator = peer_evaluator(task, spec["eval_episodes"], seed + 10_000)
    # the same schedule as rl-runner's Trainer: after the update that reaches next_eval
    state = {"next": spec["eval_every"], "last_step": -1, "last": None, "count": 0}

    def evaluate(step: int, force: bool = False) -> None:
        if step < state["next"] and not force:
            return
        state["last"] = evaluator.run(act)
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
    last = state["last"]
    result = {"status": "completed", "env_steps": int(model.num_timesteps),
              "loop_seconds": seconds, "sps": model.num_timesteps / seconds,
              **scored(last["return_mean"], last["return_std"], last["episodes"]),
              "evaluations": state["count"],
              "torch_threads": torch.get_num_threads(), "device": str(model.device),
              "eval_deterministic": spec.get("eval_deterministic", True)}
    final = spec.get("final_episodes", 0)
    if final:  # after the timing: the final model again, over more episodes (as rl-eval)
        evaluator = peer_evaluator(task, final, seed + 10_000)
        res = evaluator.run(act)
        evaluator.close()
        result.update(**scored(res["return_mean"], res["return_std"], res["episodes"]),
                      final_episodes=final, last_eval=last_eval(result))
    Path(spec["out"]).write_text(json.dumps(result, indent=2) + "\n")


def kept_run(task: Task, seed: int, runner: str, threads: int | None, work: Path,
             deterministic: bool = True, final_episodes: int = 0) -> dict | None:
    """A completed run of this task, seed and runner already in `work` (--reuse), else None;
    a peer's run scored with other actions (mode vs sampled) than rl-runner's preset asks for,
    or over another number of final episodes, is not kept (runs written before the keys were
    recorded were scored with the mode, by their last evaluation). An rl-runner run is scored
    again from its checkpoint instead (final_score)."""
    backend = backend_of(runner)
    if backend is not None:
        where = rl_runner_dir(task, seed, work, backend, extra_of(runner)) / "results.json"
    else:
        where = sb3_result(task, seed, threads, work)
    if not where.exists():
        return None
    row = row_file(task, seed, runner, work)
    if row.exists():  # written by the benchmark that ran it: has its load and process time
        r = json.loads(row.read_text())
    elif backend is not None:
        r = read_rl_runner(task, where.parent, None, backend)
    else:
        r = {**json.loads(where.read_text()), "process_seconds": None}
    if r["status"] != "completed":
        return None
    if backend is None and (r.get("eval_deterministic", True) != deterministic
                            or r.get("final_episodes", 0) != final_episodes):
        return None
    ended = datetime.datetime.fromtimestamp(where.stat().st_mtime, datetime.timezone.utc)
    return {**r, "kept": ended.strftime("%Y-%m-%d %H:%M")}


def row_file(task: Task, seed: int, runner: str, work: Path) -> Path:
    return work / f"row_{task.key}_s{seed}_{runner.replace(' ', '_')}.json"


def envpool_ceilings(plan: dict, args: argparse.Namespace) -> dict[str, float]:
    """EnvPool's own rate on each task's envs, where an envpool runner is in the run. Measured
    before the runs and after them, and the faster kept: a host busy for a moment only lowers
    it (on an AMD EPYC, 33.2k env steps/s on LunarLander just after a run, 71-73k a minute
    later), and the bar compares rl-runner's loop with what EnvPool can do."""
    if "envpool" not in args.backend_list:
        return {}
    rates = {}
    for name in plan:
        task = TASKS[name]
        rate = envpool_alone(task.env_id, task.n_envs, task.env_cfg.get("atari"))
        if rate is not None:  # (None: EnvPool has no twin of the env)
            rates[name] = rate
            print(f"benchmark: EnvPool alone on {name}'s envs: {rate:.0f} env steps/s",
                  flush=True)
    return rates


# ---- running and reporting ---------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="benchmark.py", description="speed and final return, rl-runner vs "
        "stable-baselines3 / sb3-contrib with the same hyperparameters; writes one section of "
        "docs/benchmarks.md per task")
    p.add_argument("--tasks", default="ppo-cartpole,ppo-lunarlander",
                   help=f"comma list of {', '.join(TASKS)} (default: %(default)s)")
    p.add_argument("--seeds", default="0", help="comma list of integer seeds (default: 0)")
    p.add_argument("--steps-scale", type=float, default=1.0,
                   help="multiplies every task's env-step budget, e.g. 0.05 for a quick check")
    p.add_argument("--sb3-threads", type=int, default=None,
                   help="torch.set_num_threads for the SB3 runs (default: torch's default, as "
                   "an RL Zoo user runs it)")
    p.add_argument("--sb3-one-thread", action="store_true",
                   help="add a third runner, SB3 with torch.set_num_threads(1) (rl-runner "
                        "uses one thread for all but sac's big matmuls)")
    p.add_argument("--backends", default="sync",
                   help="comma list of rl-runner's env.vectorization backends to run, each a "
                   "runner of its own: sync, async, envpool (default: %(default)s)")
    p.add_argument("--rl-run-extra", default="",
                   help="overrides added to every rl-runner run, e.g. 'algo.precision=bf16' "
                   "(not hyperparameters SB3 gets: the comparison checks those); the runner's "
                   "label and run directory name them")
    p.add_argument("--device", default="cpu",
                   help="where both libraries train: cpu, cuda or cuda:N (rl-runner's "
                   "trainer.device, SB3's device; default: %(default)s)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                   help="markdown file whose speed-<task> sections are replaced "
                   "(default: %(default)s)")
    p.add_argument("--final-episodes", type=int, default=None,
                   help="score each side's final model again after its run over N episodes "
                   "(rl-eval; SB3's evaluator, the same seeds) for the return columns; default: "
                   f"{ATARI_FINAL_EPISODES} on Atari, where one game's score varies by about 3 "
                   "at 100k steps, 0 elsewhere (the run's own last evaluation)")
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
    args.extra = tuple(shlex.split(args.rl_run_extra))
    bad = [o for o in args.extra if "=" not in o or o.split(".", 1)[0] not in ("algo", "trainer")]
    if bad:
        p.error(f"--rl-run-extra {args.rl_run_extra!r}: each item is algo.<key>=<value> or "
                "trainer.<key>=<value>")
    args.backend_list = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in args.backend_list if b not in ("sync", "async", "envpool")]
    if bad or not args.backend_list:
        p.error(f"--backends {args.backends!r}: allowed: sync, async, envpool")
    if args.final_episodes is not None and args.final_episodes < 0:
        p.error("--final-episodes must be 0 (the run's last evaluation) or more")
    if args.sb3_threads is not None and args.sb3_threads < 1:
        p.error("--sb3-threads must be at least 1")
    if args.device != "cpu":
        import torch

        if not args.device.startswith("cuda") or not torch.cuda.is_available():
            p.error(f"--device {args.device}: allowed here: cpu" + (
                ", cuda, cuda:N" if torch.cuda.is_available() else
                " (torch sees no CUDA device)"))
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
    runners: list[tuple[str, int | None]] = [(runner_label(b, args.extra), None)
                                             for b in args.backend_list]
    runners.append((label, args.sb3_threads))
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
        final = args.final_episodes if args.final_episodes is not None else \
            ATARI_FINAL_EPISODES if task.atari else 0
        plan[name] = (steps, eval_every, cfg["trainer"]["eval_episodes"],
                      bool(cfg["trainer"].get("eval_deterministic", True)), final)

    exe = os.path.relpath(sys.executable) if Path(sys.executable).is_relative_to(Path.cwd()) \
        else "python"
    command = shlex.join([exe, os.path.relpath(Path(__file__).resolve()), *argv])
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    load_start = os.getloadavg()[0]
    total = len(plan) * len(args.seed_list) * len(runners)
    print(f"benchmark: {total} runs ({', '.join(r for r, _ in runners)}) on "
          f"{', '.join(f'{n} {s[0]} steps' for n, s in plan.items())}; seeds {args.seeds}",
          flush=True)
    ceilings = envpool_ceilings(plan, args)  # before the runs, and again after: the faster
    rows = []
    with tempfile.TemporaryDirectory(prefix="rl-bench-") as tmp:
        work = args.runs_dir.resolve() if args.runs_dir else Path(tmp)
        if args.device != "cpu":  # --reuse never mixes runs made on different devices
            work = work / args.device.replace(":", "")
        work.mkdir(parents=True, exist_ok=True)
        for name, (steps, eval_every, eval_episodes, deterministic, final) in plan.items():
            for seed in args.seed_list:
                for runner, threads in runners:
                    load = os.getloadavg()[0]
                    kept = kept_run(TASKS[name], seed, runner, threads, work, deterministic,
                                    final) if args.reuse else None
                    if kept:
                        r = kept
                    elif backend_of(runner) is not None:
                        r = run_rl_runner(TASKS[name], seed, steps, work, args.device,
                                          args.extra, backend_of(runner))
                    else:
                        r = run_sb3(TASKS[name], seed, steps, threads, eval_every, eval_episodes,
                                    work, args.device, deterministic, final)
                    r.update(task=name, seed=seed, runner=runner)
                    if not kept:
                        r.update(load=(load, os.getloadavg()[0]))
                    unscored = r
                    if backend_of(runner) is not None:  # the same dict where nothing to score
                        r = final_score(r, rl_runner_dir(TASKS[name], seed, work,
                                                         backend_of(runner), args.extra),
                                        final, work)
                    if not kept or r is not unscored:  # its row is kept for a later --reuse
                        row = {k: v for k, v in r.items() if k != "kept"}
                        row_file(TASKS[name], seed, runner, work).write_text(json.dumps(row))
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
    after = envpool_ceilings(plan, args)
    for name in plan:
        ceiling = max(ceilings.get(name, 0.0), after[name]) if name in after else None
        section = markdown([r for r in rows if r["task"] == name], runners, args, command,
                           started, loads, {name: plan[name]}, ceiling)
        write_section(args.out, task_section(name), section, before=METHOD_SECTION)
        print()
        print("\n".join(section.splitlines()[1:-1]))
        print(f"benchmark: wrote the {task_section(name)} section of {args.out}")
    return 1 if any(r["status"] != "completed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
