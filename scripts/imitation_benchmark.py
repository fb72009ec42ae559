"""Imitation check: gail and bc from the bundled experts' data, final returns against the expert's.

    python scripts/imitation_benchmark.py --experiments cartpole-30-pairs --seeds 0,1,2 --jobs 2

Each (experiment, algo, seed) is one `rl-run` with the listed dataset overrides and the tuned
defaults. The table goes to the `imitation` section of docs/benchmarks.md (rows of the experiments
run are replaced, others kept), with the expert's own return from rl_runner/experts/experts.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_common import group_runs, rl_run, seed_cells, write_table_section

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- imitation:start -->", "<!-- imitation:end -->"
# experiment -> (env, dataset overrides, algos): the seed experiment is 30 (s, a) pairs drawn
# from one expert trajectory; the others give 10 whole expert episodes
EXPERIMENTS = {
    "cartpole-30-pairs": ("cartpole", ["dataset.episodes=1", "dataset.max_samples=30"],
                          ["gail", "bc"]),
    "cartpole-10-episodes": ("cartpole", ["dataset.episodes=10"], ["bc", "gail"]),
    "lunarlander-10-episodes": ("lunarlander", ["dataset.episodes=10"], ["bc", "gail"]),
    "pendulum-10-episodes": ("pendulum", ["dataset.episodes=10"], ["bc", "gail"]),
}
# bc learns from every pair it is given (no held-out split), as gail does
ALGO_OVERRIDES = {"bc": ["algo.val_fraction=0"]}
HEADER = ["| experiment | algo | env | budget | seeds | final eval return per seed | mean | "
          "expert return (50 episodes) | mean / expert | wall s per seed | date |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]


def run_one(experiment: str, algo: str, seed: int, work: Path) -> dict:
    env, overrides, _ = EXPERIMENTS[experiment]
    result = rl_run([f"algo={algo}", f"env={env}", f"seed={seed}", *overrides,
                     *ALGO_OVERRIDES.get(algo, [])], work / f"{experiment}_{algo}_s{seed}",
                    f"{experiment} {algo} seed {seed}")
    return {"algo": algo, "seed": seed, **result, "experiment": experiment}


def rows(results: list[dict], stamp: str) -> dict[tuple[str, str], str]:
    experts = json.loads((ROOT / "rl_runner" / "experts" / "experts.json").read_text())
    out = {}
    for (experiment, algo), (ok, _) in group_runs(results, ("experiment", "algo")).items():
        env = EXPERIMENTS[experiment][0]
        if not ok:
            out[experiment, algo] = f"| {experiment} | {algo} | {env} | failed |" + " - |" * 7
            continue
        seeds, returns, walls, mean = seed_cells(ok)
        expert = experts[env]["return_mean_50_episodes"]
        unit = "gradient" if algo == "bc" else "env"
        out[experiment, algo] = (
            f"| {experiment} | {algo} | {env} | {ok[0]['env_steps']} {unit} steps | {seeds} | "
            f"{returns} | {mean:.1f} | {expert:.1f} | {mean / expert:.3f} | {walls} | {stamp} |")
    return out


def write_section(path: Path, new_rows: dict[tuple[str, str], str], command: str) -> str:
    return write_table_section(path, START, END, (
            "## Imitation from the bundled experts\n\n"
            "Final deterministic evaluation, 20 episodes, after the whole budget. Data: the "
            "bundled expert's episodes (seeds 0, 1, ...), `dataset.episodes` of them, then "
            "`dataset.max_samples` (s, a) pairs drawn at random; bc with `algo.val_fraction=0`. "
            "Where returns are negative (pendulum), mean / expert below 1 is better than the "
            "expert. "
            "Made by `python scripts/imitation_benchmark.py` (last: `" + command + "`); rows "
            "of the experiments run are replaced."), HEADER, new_rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiments", default=",".join(EXPERIMENTS),
                   help=f"comma list of {', '.join(EXPERIMENTS)} (default: all)")
    p.add_argument("--algos", default="", help="comma list: only these algorithms (default: "
                   "each experiment's)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = p.parse_args()
    names = args.experiments.split(",")
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown:
        p.error(f"unknown experiment {', '.join(unknown)}; choices: {', '.join(EXPERIMENTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    only = set(filter(None, args.algos.split(",")))
    jobs = [(n, a, s) for n in names for a in EXPERIMENTS[n][2] for s in seeds
            if not only or a in only]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda j: run_one(*j, Path(tmp)), jobs))
    stamp = datetime.datetime.now().strftime("%Y-%m-%d")
    command = "python scripts/imitation_benchmark.py " + " ".join(sys.argv[1:])
    print(write_section(args.out, rows(results, stamp), command.strip()))


if __name__ == "__main__":
    main()
