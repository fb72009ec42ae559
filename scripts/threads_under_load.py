"""`rl-run algo=sac env=pendulum` with trainer.torch_threads=auto against =1, idle and loaded.

Issue 19, point 7: with another process on one of 2 cores, `auto` (2 threads for sac's 256x256
networks) ran 6-13x slower than 1 thread: torch's OpenMP runtime (libgomp) spin-waits at every
barrier by default. Each configuration is a fresh `rl-run` with a short budget; the
configurations alternate within each round (order reversed every other round). "loaded" runs them
while a busy loop (`python -c "while True: pass"`) holds one core. `--baseline DIR` adds `auto`
from another checkout (PYTHONPATH=DIR, e.g. `git worktree add /tmp/base HEAD~1`) to the idle
rounds, so that a change can be compared with the code before it side by side.

    python scripts/threads_under_load.py --baseline /tmp/base      # writes its docs section
    python scripts/threads_under_load.py --rounds 1 --steps 1000 --out /tmp/x.md   # a quick look
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import RL_RUN, machine, package_versions, replace_section  # noqa: E402

SECTION = "<!-- threads-under-load:start -->", "<!-- threads-under-load:end -->"
BASE_ARGS = ["algo=sac", "env=pendulum", "trainer.progress=false", "trainer.eval_episodes=2"]


def run_once(threads: str, steps: int, pythonpath: str | None, run_dir: Path) -> dict:
    """One rl-run; its results.json (env steps/s in "sps", the threads it used)."""
    args = [*BASE_ARGS, f"trainer.total_steps={steps}", f"trainer.eval_every={steps}",
            f"hydra.run.dir={run_dir}"]
    if threads != "auto":
        args.append(f"trainer.torch_threads={threads}")
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([str(RL_RUN), *args], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir())
    if proc.returncode != 0:
        sys.exit(f"rl-run {' '.join(args)} failed: {proc.stderr.strip()[-500:]}")
    return json.loads((run_dir / "results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3000, help="trainer.total_steps of a run")
    parser.add_argument("--checkout", help="PYTHONPATH for the auto and =1 runs (default: the "
                                           "installed rl_runner)")
    parser.add_argument("--baseline", help="a checkout whose auto joins the idle rounds")
    parser.add_argument("--conditions", default="idle,loaded")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    conditions = args.conditions.split(",")
    configs = {"idle": [("auto", "auto", args.checkout), ("threads=1", "1", args.checkout)],
               "loaded": [("auto", "auto", args.checkout), ("threads=1", "1", args.checkout)]}
    if args.baseline:
        configs["idle"].append(("auto (baseline)", "auto", args.baseline))
    sps: dict[tuple[str, str], list[float]] = {}
    used: dict[tuple[str, str], int] = {}
    load: dict[str, list[float]] = {}  # 1-minute load average as each run starts
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for cond in conditions:
                busy = (subprocess.Popen([sys.executable, "-c", "while True: pass"])
                        if cond == "loaded" else None)
                try:
                    order = configs[cond] if r % 2 == 0 else configs[cond][::-1]
                    for name, threads, path in order:
                        label = "".join(c if c.isalnum() else "_" for c in name)
                        run_dir = Path(tmp) / f"{cond}-{label}-{r}"
                        load.setdefault(cond, []).append(os.getloadavg()[0])
                        res = run_once(threads, args.steps, path, run_dir)
                        sps.setdefault((cond, name), []).append(res["sps"])
                        used[cond, name] = res.get("torch_threads", 0)
                        print(f"round {r + 1} {cond}: {name} ({used[cond, name]} threads): "
                              f"{res['sps']:.1f} env steps/s", flush=True)
                finally:
                    if busy is not None:
                        busy.kill()
                        busy.wait()
    med = {k: statistics.median(v) for k, v in sps.items()}
    command = "python scripts/threads_under_load.py" + "".join(f" {a}" for a in sys.argv[1:])
    lines = [
        "## torch threads under load (sac pendulum, auto against 1 thread)",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} (UTC)",
        f"- Machine: {machine()}",
        "- Versions: " + package_versions({"torch": "torch", "numpy": "numpy"}),
        f"- Command: `{command}`",
        f"- `rl-run {' '.join(BASE_ARGS)} trainer.total_steps={args.steps} "
        f"trainer.eval_every={args.steps}`, each run a fresh process; configurations alternate "
        f"within each of {args.rounds} rounds; loaded: a `while True: pass` process holds a core. "
        "env steps/s is results.json's sps; median over rounds [min, max]. 1-minute load "
        "average as the runs started (other processes' too): "
        + "; ".join(f"{c} median {statistics.median(v):.1f}" for c, v in load.items()) + ".",
        "",
        "| condition | configuration | torch threads | env steps/s | ratio to threads=1 |",
        "|---|---|---|---|---|",
    ]
    for cond in conditions:
        for name, _, _ in configs[cond]:
            v = sps[cond, name]
            ratio = med[cond, name] / med[cond, "threads=1"]
            lines.append(f"| {cond} | {name} | {used[cond, name]} | {med[cond, name]:.1f} "
                         f"[{min(v):.1f}, {max(v):.1f}] | {ratio:.2f} |")
    if ("idle", "auto (baseline)") in med:
        per_round = [a / b for a, b in zip(sps["idle", "auto"], sps["idle", "auto (baseline)"])]
        ratio = med["idle", "auto"] / med["idle", "auto (baseline)"]
        lines += ["", f"Idle, auto against the baseline's auto: {ratio:.2f} (ratio of medians); "
                  f"median of the per-round ratios {statistics.median(per_round):.2f}."]
    body = "\n".join(lines)
    replace_section(args.out, *SECTION, body)
    print(body)


if __name__ == "__main__":
    main()
