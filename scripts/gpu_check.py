"""For whoever has a GPU: does every algorithm update on CUDA as on the CPU, and how fast are
rl-runner and stable-baselines3 on each? Writes the `gpu-check` section of docs/benchmarks.md.

    python scripts/gpu_check.py                        # both parts on cuda
    python scripts/gpu_check.py --parts equality       # the update equality only
    python scripts/gpu_check.py --sac-steps 5000 --ppo-steps 20000   # shorter speed runs
    python scripts/gpu_check.py --device cpu           # dry run, no GPU needed: the equality
                                                       # harness CPU against CPU, nothing written

(a) equality: one update of each algorithm (scripts/gpu_equality.py) built by build_algo on the
    CPU and on the device from the same seed, state and batch; the parameters and optimizer
    state after it are compared. Algorithms whose constructor takes no device say "cpu only".
(b) speed: `rl-run algo=sac env=halfcheetah` and `rl-run algo=ppo env=breakout` on the CPU and
    on the device, each beside SB3 with the same hyperparameters on the same device
    (scripts/benchmark.py's runners and tasks; steps/s of the training loop only).
"""
from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

SECTION = "gpu-check"
SPEED_TASKS = ("sac-halfcheetah", "ppo-breakout")


def fail(message: str) -> None:
    print(f"gpu_check.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv: list[str]) -> argparse.Namespace:
    from gpu_equality import CASES

    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--device", default="cuda",
                   help="cuda, cuda:N, or cpu for the dry run (default: %(default)s)")
    p.add_argument("--parts", default="equality,speed", help="comma list of equality, speed")
    p.add_argument("--cases", default=",".join(CASES),
                   help="equality cases, comma list (default: all): %(default)s")
    p.add_argument("--tol", type=float, default=1e-3,
                   help="largest device-vs-CPU difference of a tensor after one update, relative "
                   "to that update's change of it, still called close (default: %(default)s)")
    p.add_argument("--sac-steps", type=int, default=20_000, help="sac-halfcheetah env steps")
    p.add_argument("--ppo-steps", type=int, default=50_000, help="ppo-breakout env steps")
    p.add_argument("--eval-episodes", type=int, default=2,
                   help="episodes (Atari: whole games) of the one evaluation after training")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md",
                   help="markdown file whose gpu-check section is replaced (default: %(default)s)")
    p.add_argument("--no-write", action="store_true", help="print the section only")
    args = p.parse_args(argv)
    args.part_list = [x.strip() for x in args.parts.split(",") if x.strip()]
    args.case_list = [x.strip() for x in args.cases.split(",") if x.strip()]
    bad = [x for x in args.part_list if x not in ("equality", "speed")] or \
        [x for x in args.case_list if x not in CASES]
    if bad or not args.part_list:
        fail(f"unknown part or case {', '.join(bad) or '(none)'}; parts: equality, speed; "
             f"cases: {', '.join(CASES)}")
    if min(args.sac_steps, args.ppo_steps, args.eval_episodes) < 1 or args.tol < 0:
        fail("--sac-steps, --ppo-steps and --eval-episodes must be positive, --tol not negative")
    return args


def check_device(device: str) -> None:
    """One line, exit 2, where the device is not here."""
    import torch

    from rl_runner.device import resolve_device
    from rl_runner.errors import UserError

    if device == "cpu":
        return
    if not device.startswith("cuda"):
        fail(f"--device {device}: allowed: cuda, cuda:N, or cpu (the dry run)")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        fail(f"CUDA is not available here (torch {torch.__version__}, {build}, sees no GPU); "
             "--device cpu runs the equality harness CPU against CPU")
    try:
        resolve_device(device)
    except UserError as e:
        fail(str(e))


def gpu_lines(device: str) -> list[str]:
    """Date, GPU, CPU and versions, for the section's header."""
    import torch

    from bench_common import machine, package_versions

    props = torch.cuda.get_device_properties(torch.device(device))
    return [f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} (UTC)",
            f"- GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB ({device}); CUDA "
            f"{torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}",
            f"- CPU: {machine()}",
            "- Versions: " + package_versions({
                "torch": "torch", "gymnasium": "gymnasium", "numpy": "numpy",
                "rl_runner": "rl-runner", "stable-baselines3": "stable-baselines3",
                "ale-py": "ale-py", "mujoco": "mujoco"})]


# ---- (b) speed ---------------------------------------------------------------------------------
def speed(args, work: Path) -> list[dict]:
    """Each task on the CPU and the device, rl-runner then SB3, one evaluation at the end."""
    from benchmark import (config_mismatches, rl_runner_config, run_rl_runner, run_sb3)
    from bench_tasks import TASKS

    rows = []
    for name in SPEED_TASKS:
        task = TASKS[name]
        wanted = args.sac_steps if task.algo_name == "sac" else args.ppo_steps
        steps = max(task.step_size, wanted // task.step_size * task.step_size)
        bad = config_mismatches(task, rl_runner_config(task, steps))
        if bad:
            fail(f"rl-runner's config for {name} differs from SB3's: {'; '.join(bad)}")
        extra = (f"trainer.eval_every={steps}", f"trainer.eval_episodes={args.eval_episodes}")
        for device in ("cpu", args.device):
            where = work / device.replace(":", "")
            where.mkdir(parents=True, exist_ok=True)
            for runner in ("rl-runner", "sb3"):
                r = run_rl_runner(task, args.seed, steps, where, device, extra) \
                    if runner == "rl-runner" else \
                    run_sb3(task, args.seed, steps, None, steps, args.eval_episodes, where, device)
                r.update(task=name, device=device, runner=runner, steps=steps)
                rows.append(r)
                print(f"{name} {device} {runner}: " + (
                    f"{r['sps']:.0f} env steps/s, eval return {r['eval_return_mean']:.1f}"
                    if r["status"] == "completed" else f"{r['status']}: {r.get('error')}"),
                    flush=True)
    return rows


def speed_table(rows: list[dict]) -> list[str]:
    lines = ["| task | device | runner | env steps | loop wall s | env steps/s | torch threads | "
             "eval return | process s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["status"] != "completed":
            lines.append(f"| {r['task']} | {r['device']} | {r['runner']} | {r['steps']} | | | | "
                         f"{r['status']}: {str(r.get('error', ''))[:120]} | |")
            continue
        lines.append(f"| {r['task']} | {r['device']} | {r['runner']} | {r['env_steps']} | "
                     f"{r['loop_seconds']:.1f} | {r['sps']:.0f} | {r['torch_threads']} | "
                     f"{r['eval_return_mean']:.1f} | {(r['process_seconds'] or 0):.1f} |")
    return lines


# ---- the section -------------------------------------------------------------------------------
def section(args, command: str, equality: list | None, rows: list[dict] | None) -> str:
    import torch

    from bench_report import markers
    from gpu_equality import table
    from rl_runner.checkpoint import CUDA_RNG, rng_state

    start, end = markers(SECTION)
    lines = [start, f"## GPU check: {torch.cuda.get_device_name(torch.device(args.device))}", "",
             *gpu_lines(args.device), f"- Command: `{command}`", ""]
    if equality is not None:
        cuda_rng = len(rng_state().get(CUDA_RNG, []))
        lines += ["### One update on the CPU and on the GPU", "",
                  "Each algorithm built by build_algo on the CPU (torch backend) and twice on the "
                  "GPU from one seed, the GPU copies given the CPU one's state; one update each "
                  "on the same batch from the trainer's feeder. equal: bit for bit; close: no "
                  f"tensor differs by more than {args.tol:g} of the change the update made to it; "
                  "the GPU-vs-GPU column is the GPU's own repeatability.", "",
                  *table(equality, args.device), "",
                  f"Checkpoint RNG state after CUDA use: {cuda_rng} CUDA generator state(s) "
                  "saved (rl_runner.checkpoint.rng_state).", ""]
    if rows is not None:
        lines += ["### Speed on the CPU and on the GPU", "",
                  "rl-runner (`rl-run algo=<algo> env=<env> trainer.device=<device>`) and SB3 "
                  "with the same hyperparameters on the same device (scripts/bench_tasks.py), "
                  "one evaluation after training; env steps/s is the training loop only, as in "
                  "the speed sections (see their method below).", "",
                  *speed_table(rows), ""]
    lines.append(end)
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    check_device(args.device)
    from gpu_equality import check, table

    dry = args.device == "cpu"
    if dry and "equality" not in args.part_list:
        fail("--device cpu is the dry run of the equality part; the speed part needs a GPU")
    equality = rows = None
    if "equality" in args.part_list:
        equality = check(args.device, args.case_list, args.tol)
        print("\n".join(table(equality, args.device)), flush=True)
    if dry:
        print("gpu_check.py: dry run (CPU against CPU): the speed part and docs need a GPU")
        return 0 if all(r.verdict in ("equal", "skipped") for r in equality or []) else 1
    if "speed" in args.part_list:
        with tempfile.TemporaryDirectory(prefix="rl-gpu-check-") as tmp:
            rows = speed(args, Path(tmp))
        print("\n".join(speed_table(rows)))
    exe = os.path.relpath(sys.executable) if Path(sys.executable).is_relative_to(Path.cwd()) \
        else "python"
    command = shlex.join([exe, os.path.relpath(Path(__file__).resolve()), *argv])
    text = section(args, command, equality, rows)
    if not args.no_write:
        from bench_report import METHOD_SECTION, write_section

        write_section(args.out, SECTION, text, before=METHOD_SECTION)
        print(f"gpu_check.py: wrote the {SECTION} section of {args.out}")
    else:
        print(text)
    bad = [r for r in equality or [] if r.verdict in ("DIFFERS", "failed")] + \
        [r for r in rows or [] if r["status"] != "completed"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
