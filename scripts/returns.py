"""Learning check: final deterministic eval return of `rl-run` with defaults, over seeds.

    python scripts/returns.py ppo:cartpole ppo:pendulum --seeds 0,1,2 --jobs 2

Each (algo, env, seed) runs as its own `rl-run` process with the tuned defaults; the table (mean
over seeds of the final 20-episode eval, and wall seconds) replaces the `returns` section of
docs/benchmarks.md. With --jobs 2 two runs share the machine, which lengthens wall times.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RL_RUN = Path(sys.executable).with_name("rl-run")
START, END = "<!-- returns:start -->", "<!-- returns:end -->"


def run_one(algo: str, env: str, seed: int, out_dir: Path) -> dict:
    run_dir = out_dir / f"{algo}_{env}_s{seed}"
    cmd = [str(RL_RUN), f"algo={algo}", f"env={env}", f"seed={seed}", "trainer.progress=false",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"algo": algo, "env": env, "seed": seed, "status": "failed",
                "error": proc.stderr.strip().splitlines()[-1:]}
    result = json.loads((run_dir / "results.json").read_text())
    print(f"{algo} {env} seed {seed}: {result['eval_return_mean']:.1f} after "
          f"{result['env_steps']} steps, {result['wall_seconds']:.0f} s", flush=True)
    return result


def table(results: list[dict]) -> str:
    rows = ["| algo | env | budget (env steps) | seeds | final eval return per seed | mean | "
            "wall s per seed |", "|---|---|---|---|---|---|---|"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["algo"], r["env"]), []).append(r)
    for (algo, env), rs in groups.items():
        ok = [r for r in rs if r.get("status") == "completed"]
        failed = [str(r["seed"]) for r in rs if r.get("status") != "completed"]
        note = f" (failed seeds: {', '.join(failed)})" if failed else ""
        if not ok:
            rows.append(f"| {algo} | {env} | - | {','.join(failed)} | failed | - | - |")
            continue
        returns = [r["eval_return_mean"] for r in ok]
        rows.append(f"| {algo} | {env} | {ok[0]['env_steps']} | "
                    f"{','.join(str(r['seed']) for r in ok)}{note} | "
                    f"{', '.join(f'{x:.1f}' for x in returns)} | {statistics.mean(returns):.1f} | "
                    f"{', '.join(str(round(r['wall_seconds'])) for r in ok)} |")
    return "\n".join(rows)


def write_section(path: Path, body: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{START}\n{body}\n{END}"
    if START in text and END in text:
        text = text[:text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="algo:env, e.g. ppo:lunarlander")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    jobs = [(*p.split(":"), s) for p in args.pairs for s in seeds]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda j: run_one(j[0], j[1], j[2], Path(tmp)), jobs))
    stamp = datetime.datetime.now().strftime("%Y-%m-%d")
    body = (f"## Returns with default hyperparameters ({stamp})\n\n"
            f"Final deterministic evaluation, 20 episodes, after the whole budget. Machine: "
            f"{platform.machine()}, {os.cpu_count()} cores; {args.jobs} run(s) at a time.\n"
            f"Command: `python scripts/returns.py {' '.join(args.pairs)} --seeds {args.seeds} "
            f"--jobs {args.jobs}`\n\n{table(results)}")
    print(body)
    write_section(Path(args.out), body)


if __name__ == "__main__":
    main()
