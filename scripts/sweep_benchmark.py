"""The same sweep run sequentially and with hydra/launcher=joblib: wall time side by side.

    python scripts/sweep_benchmark.py                      # algo=ppo,trpo env=cartpole seed=0,1,2
    python scripts/sweep_benchmark.py --sweep algo=ppo env=cartpole seed=0,1

Writes the sweep-launchers section of docs/benchmarks.md (date, machine, versions, the commands,
wall seconds, their ratio, and each configuration's final eval return from summary.csv).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine, package_versions, replace_section, timed_rl_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- sweep-launchers:start -->", "<!-- sweep-launchers:end -->"
LAUNCHERS = {"sequential (basic launcher)": [], "joblib": ["hydra/launcher=joblib"]}
PACKAGES = {"torch": "torch", "gymnasium": "gymnasium", "hydra-core": "hydra-core",
            "hydra-joblib-launcher": "hydra-joblib-launcher", "joblib": "joblib",
            "rl_runner": "rl-runner"}


def read_summary(sweep_dir: Path) -> tuple[list[dict], list[dict]]:
    with open(sweep_dir / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if r["kind"] == "job"], [r for r in rows if r["kind"] == "config"]


def section(sweep: list[str], measured: dict[str, dict], loads: list[float], work: Path) -> str:
    base = measured["sequential (basic launcher)"]["wall"]
    lines = [
        "## Sweeps: joblib against the sequential launcher", "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} (UTC)",
        f"- Machine: {machine()}; 1-min load average {loads[0]:.2f} at start, "
        f"{loads[-1]:.2f} at end",
        f"- Versions: {package_versions(PACKAGES)}",
        f"- Command: `python scripts/sweep_benchmark.py --sweep {shlex.join(sweep)} "
        f"--workdir {work}`", "",
        "| launcher | command | jobs | wall s | wall / sequential | sum of the jobs' own wall s |"
        " torch threads per job |",
        "|---|---|---|---|---|---|---|"]
    for name, m in measured.items():
        jobs = m["jobs"]
        threads = sorted({j["torch_threads"] for j in m["results"]})
        lines.append(f"| {name} | `rl-run -m {shlex.join(sweep + LAUNCHERS[name])}` | {len(jobs)}"
                     f" | {m['wall']:.1f} | {m['wall'] / base:.2f} | "
                     f"{sum(float(j['wall_seconds']) for j in jobs):.1f} | "
                     f"{', '.join(map(str, threads))} |")
    lines += ["", "Final eval return per configuration (mean over seeds, from each sweep's "
              "summary.csv):", "", "| configuration | " + " | ".join(measured) + " |",
              "|---" * (len(measured) + 1) + "|"]
    configs = {c["config"]: {} for m in measured.values() for c in m["configs"]}
    for name, m in measured.items():
        for c in m["configs"]:
            mean = f"{float(c['return_mean']):.1f}" if c["return_mean"] else "none"
            configs[c["config"]][name] = f"{mean} ({c['completed']}/{c['runs']})"
    for config, cells in configs.items():
        lines.append(f"| {config} | " + " | ".join(cells.get(n, "") for n in measured) + " |")
    lines += ["", "Wall s: the whole `rl-run -m` process, start to exit (Python start-up, "
              "composition, the jobs, the summary). The joblib launcher runs one job per core "
              "(n_jobs=-1) and each job takes cores // jobs torch threads "
              "(rl_runner/sweeps.py)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", nargs="+",
                        default=["algo=ppo,trpo", "env=cartpole", "seed=0,1,2"])
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the sweeps go (default: a new temporary folder)")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sweep_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    loads, measured = [os.getloadavg()[0]], {}
    for name, extra in LAUNCHERS.items():
        sweep_dir = work / name.split()[0]
        wall = timed_rl_run(["-m", *args.sweep, *extra, f"hydra.sweep.dir={sweep_dir}"],
                            work / f"{name.split()[0]}.log")
        jobs, configs = read_summary(sweep_dir)
        results = [json.loads((sweep_dir / j["job"] / "results.json").read_text())
                   for j in jobs]
        measured[name] = {"wall": wall, "jobs": jobs, "configs": configs, "results": results}
        print(f"{name}: {wall:.1f} s", flush=True)
        loads.append(os.getloadavg()[0])
    replace_section(DOC, START, END, section(args.sweep, measured, loads, work))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
