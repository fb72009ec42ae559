"""Learning check: final deterministic eval return of `rl-run` with defaults, over seeds.

    python scripts/returns.py ppo:cartpole ppo:pendulum --seeds 0,1,2 --jobs 2
    python scripts/returns.py dqn:cartpole a2c:cartpole td3:pendulum ddpg:pendulum

Each (algo, env, seed) runs as its own `rl-run` process with the tuned defaults; its row in the
`returns` section of docs/benchmarks.md (final 20-episode eval per seed, mean, wall seconds) is
replaced, other rows are kept. With --jobs 2 two runs share the machine, lengthening wall times.
"""
from __future__ import annotations

import argparse
import datetime
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench_common import group_runs, machine, rl_run, seed_cells, write_table_section

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- returns:start -->", "<!-- returns:end -->"


def run_one(algo: str, env: str, seed: int, out_dir: Path) -> dict:
    result = rl_run([f"algo={algo}", f"env={env}", f"seed={seed}"],
                    out_dir / f"{algo}_{env}_s{seed}", f"{algo} {env} seed {seed}")
    return {"algo": algo, "env": env, "seed": seed, **result}


HEADER = ["| algo | env | budget (env steps) | seeds | final eval return per seed | mean | "
          "wall s per seed | runs at a time | date |", "|---|---|---|---|---|---|---|---|---|"]


def rows(results: list[dict], jobs: int, stamp: str) -> dict[tuple[str, str], str]:
    """One table row per (algo, env), keyed so a later run can replace just its own rows."""
    out = {}
    for (algo, env), (ok, rs) in group_runs(results, ("algo", "env")).items():
        failed = [str(r["seed"]) for r in rs if r.get("status") != "completed"]
        note = f" (failed seeds: {', '.join(failed)})" if failed else ""
        if not ok:
            out[algo, env] = f"| {algo} | {env} | - | {','.join(failed)} | failed | - | - | " \
                             f"{jobs} | {stamp} |"
            continue
        seeds, returns, walls, mean = seed_cells(ok)
        out[algo, env] = (f"| {algo} | {env} | {ok[0]['env_steps']} | {seeds}{note} | {returns} | "
                          f"{mean:.1f} | {walls} | {jobs} | {stamp} |")
    return out


def write_section(path: Path, new_rows: dict[tuple[str, str], str]) -> str:
    return write_table_section(path, START, END, (
            f"## Returns with default hyperparameters\n\n"
            f"Final deterministic evaluation, 20 episodes, after the whole budget (`rl-run "
            f"algo=<algo> env=<env> seed=<seed>`, nothing else). Machine of the latest rows: "
            f"{machine()}. Made by `python scripts/returns.py <algo>:<env> ... "
            f"--seeds 0,1,2 --jobs N`; each row is replaced when its pair is measured again."),
        HEADER, new_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="algo:env, e.g. ppo:lunarlander")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    bad = [p for p in args.pairs if len(p.split(":")) != 2 or not all(p.split(":"))]
    if bad:
        parser.error(f"pairs are algo:env (e.g. dqn:cartpole), not {', '.join(bad)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds must be a comma list of integers, not {args.seeds!r}")
    jobs = [(*p.split(":"), s) for p in args.pairs for s in seeds]
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda j: run_one(j[0], j[1], j[2], Path(tmp)), jobs))
    stamp = datetime.datetime.now().strftime("%Y-%m-%d")
    print(write_section(Path(args.out), rows(results, args.jobs, stamp)))

if __name__ == "__main__":
    main()
