"""Run an Optuna preset, then its best configuration against the default on fresh seeds.

    python scripts/search_benchmark.py                       # hparams_search=ppo_cartpole
    python scripts/search_benchmark.py --fresh-seed 100 --workdir /tmp/search

1. `rl-run -m hparams_search=<preset>` with its study in <workdir>/study.db (sqlite);
2. the same command again with hydra.sweeper.n_trials=1: the study must resume (one more trial);
3. the best trial's parameters and the default (no parameters) each as one job of repeats=3 with
   seeds the search never used, at the preset's budget.
Writes the hparams-search section of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import machine, package_versions, replace_section, timed_rl_run  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- hparams-search:start -->", "<!-- hparams-search:end -->"
PACKAGES = {"torch": "torch", "gymnasium": "gymnasium", "hydra-optuna-sweeper":
            "hydra-optuna-sweeper", "optuna": "optuna", "sqlalchemy": "sqlalchemy",
            "rl_runner": "rl-runner"}


def study_trials(storage: str, name: str) -> list[tuple[int, str, float | None]]:
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    return [(t.number, t.state.name, t.value) for t in study.trials]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="ppo_cartpole")
    parser.add_argument("--fresh-seed", type=int, default=100,
                        help="first of the 3 seeds for the comparison (the search uses 0, 1, ...)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="search_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{work / 'study.db'}"
    search = ["-m", f"hparams_search={args.preset}", "trainer.progress=false",
              f"hydra.sweeper.storage={storage}"]
    wall = timed_rl_run([*search, f"hydra.sweep.dir={work / 'search'}"], work / "search.log")
    best = yaml.safe_load((work / "search" / "optimization_results.yaml").read_text())
    preset = yaml.safe_load((ROOT / "conf" / "hparams_search" / f"{args.preset}.yaml").read_text())
    study_name = preset["hydra"]["sweeper"]["study_name"]
    budget, repeats = preset["trainer"]["total_steps"], preset.get("repeats", 1)
    before = study_trials(storage, study_name)
    timed_rl_run([*search, "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={work / 'resumed'}"],
           work / "resumed.log")
    after = study_trials(storage, study_name)
    print(f"search: {len(before)} trials in {wall:.0f} s, best {best['best_value']:.1f}; "
          f"resumed: {len(after)} trials", flush=True)
    algo, env = preset["defaults"][0]["override /algo"], preset["defaults"][1]["override /env"]
    common = [f"algo={algo}", f"env={env}", f"trainer.total_steps={budget}",
              f"trainer.eval_every={budget}", "repeats=3", f"seed={args.fresh_seed}",
              "trainer.progress=false"]
    params = [f"{k}={v}" for k, v in best["best_params"].items()]
    compared = {}
    for label, extra in (("best trial", params), ("default", [])):
        run_dir = work / label.replace(" ", "_")
        timed_rl_run([*common, *extra, f"hydra.run.dir={run_dir}"], work / f"{run_dir.name}.log")
        res = json.loads((run_dir / "results.json").read_text())
        finals = [json.loads((run_dir / r / "results.json").read_text())["eval_return_mean"]
                  for r in res["runs"]]
        compared[label] = (extra, finals, res["eval_return_mean"])
        print(f"{label}: {finals} mean {res['eval_return_mean']:.1f}", flush=True)
    seeds = f"{args.fresh_seed}, {args.fresh_seed + 1}, {args.fresh_seed + 2}"
    lines = [
        f"## Hyperparameter search: hparams_search={args.preset}", "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} (UTC)",
        f"- Machine: {machine()}",
        f"- Versions: {package_versions(PACKAGES)}",
        f"- Command: `python scripts/search_benchmark.py --preset {args.preset} "
        f"--fresh-seed {args.fresh_seed} --workdir {work}`",
        f"- Search: `rl-run {shlex.join(search)}`: {len(before)} trials (each the mean of "
        f"seeds 0 to {repeats - 1} at {budget} env steps) in {wall:.0f} s; best trial value "
        f"{best['best_value']:.1f}",
        f"- Resume: the same command with `hydra.sweeper.n_trials=1` loaded the study "
        f"({len(before)} trials) and added one: {len(after)} trials, states "
        f"{sorted({s for _, s, _ in after})}", "",
        f"Fresh seeds {seeds}, {budget} env steps, final eval of 20 episodes "
        f"(`rl-run {shlex.join(common)} [parameters]`):", "",
        "| configuration | parameters | final eval return per seed | mean |", "|---|---|---|---|"]
    for label, (extra, finals, mean) in compared.items():
        lines.append(f"| {label} | {' '.join(extra) or '(the tuned preset)'} | "
                     f"{', '.join(f'{v:.1f}' for v in finals)} | {mean:.1f} |")
    lines += ["", f"Trial values (mean over seeds 0 to {repeats - 1}): " + ", ".join(
        f"#{n} {v:.1f}" if v is not None else f"#{n} {s}" for n, s, v in after)]
    replace_section(DOC, START, END, "\n".join(lines))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
