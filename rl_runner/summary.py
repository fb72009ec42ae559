"""A sweep's (or one run's) results gathered into tables: summary.csv for machines, summary.md for
people. Job rows come from each run's results.json; configuration rows aggregate the seeds."""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from rl_runner.fileio import write_atomic
from rl_runner.errors import UserError
from rl_runner.stats import bootstrap_ci, iqm, mean_std

JOB_COLUMNS = ["job", "config", "seed", "status", "eval_return_mean", "eval_return_std",
               "best_eval_return_mean", "env_steps", "wall_seconds", "sps", "error"]
CONFIG_COLUMNS = ["config", "runs", "completed", "failed", "return_mean", "return_std",
                  "return_iqm", "return_ci_low", "return_ci_high", "env_steps_mean",
                  "wall_seconds_total", "wall_seconds_mean"]
CSV_COLUMNS = ["kind", *JOB_COLUMNS, *[c for c in CONFIG_COLUMNS if c not in JOB_COLUMNS]]


@dataclass
class Run:
    """One training run: `job` is its directory relative to the sweep root ("3_ppo_cartpole_s0",
    or "3_ppo_cartpole_s0/s1" for a repeat job's run); `results` is None when results.json is
    missing or unreadable, and `error` then says why it is unreadable."""

    path: Path
    job: str
    config: str
    seed: int | None
    results: dict | None
    error: str | None = None


def collect_runs(root: Path | str) -> list[Run]:
    """The runs under `root`: root itself when it holds a results.json (its listed runs when that
    names "runs"), otherwise every job directory (one with .hydra/) in job-number order."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a directory" if root.exists() else f"{root} does not exist")
    if (root / "results.json").exists() or (root / ".hydra").is_dir():
        return _job_runs(root, root.resolve().name)
    jobs = [d for d in root.iterdir() if d.is_dir() and (d / ".hydra").is_dir()]
    return _drop_shared(run for d in sorted(jobs, key=_job_order) for run in _job_runs(d, d.name))


def _drop_shared(runs) -> list[Run]:
    """Labels without the overrides every job of the sweep shares (summary.md's header shows
    the sweep's command line): what is left is what was swept."""
    runs = list(runs)
    labels = {run.config for run in runs}
    if len(labels) < 2:
        return runs
    shared = set.intersection(*(set(label.split(" ")) for label in labels))
    for run in runs:
        run.config = " ".join(e for e in run.config.split(" ") if e not in shared) or "defaults"
    return runs


def sweep_command(sweep_dir: Path) -> str | None:
    """`rl-run -m <overrides>` as the sweep was started (Hydra's multirun.yaml), if known."""
    try:
        task = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]["overrides"]
        return "rl-run -m " + " ".join(map(str, task["task"]))
    except (OSError, TypeError, KeyError, yaml.YAMLError):
        return None


def _job_order(job_dir: Path) -> tuple:
    number = re.match(r"\d+", job_dir.name)
    return (0, int(number.group()), job_dir.name) if number else (1, 0, job_dir.name)


def _job_runs(job_dir: Path, job: str) -> list[Run]:
    """A job's runs: itself, or, for a repeat job, the subdirectories its results.json lists."""
    label, seed, problems = _read_hydra(job_dir)
    results, problem = _read_results(job_dir)
    problems += [problem] if problem else []
    error = "; ".join(problems) or None
    names = (results or {}).get("runs")
    if not names:
        own = _int_or_none((results or {}).get("seed"))  # results.json's seed comes first
        return [Run(job_dir, job, label, seed if own is None else own, results, error)]
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        return [Run(job_dir, job, label, seed, None, "results.json: 'runs' is not a list of names")]
    runs = []
    for name in names:
        sub, problem = _read_results(job_dir / name)
        seed = _int_or_none((sub or {}).get("seed"))  # a repeat's runs differ from the job's
        runs.append(Run(job_dir / name, f"{job}/{name}", label, seed, sub, problem or error))
    return runs


def _read_results(run_dir: Path) -> tuple[dict | None, str | None]:
    """(results.json's contents or None, why it could not be read or None)."""
    path = run_dir / "results.json"
    if not path.exists():
        return None, None
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        return None, f"results.json unreadable: {e}"
    if not isinstance(results, dict):
        return None, "results.json is not a JSON object"
    return results, None


def _read_hydra(job_dir: Path) -> tuple[str, int | None, list[str]]:
    """(config label, seed from .hydra/config.yaml or the seed= override, problems reading)."""
    problems, seed, keep = [], None, []
    overrides = _read_yaml(job_dir / ".hydra" / "overrides.yaml", problems) or []
    if not isinstance(overrides, list):
        problems.append(".hydra/overrides.yaml is not a list")
        overrides = []
    for entry in map(str, overrides):
        key, _, value = entry.partition("=")
        key = key.lstrip("+~")
        if key == "seed":
            seed = _int_or_none(value)
        elif not (key == "hydra" or key.startswith(("hydra.", "hydra/"))):
            keep.append(entry)
    config = _read_yaml(job_dir / ".hydra" / "config.yaml", problems)
    if isinstance(config, dict) and _int_or_none(config.get("seed")) is not None:
        seed = _int_or_none(config["seed"])
    return " ".join(keep) or "defaults", seed, problems


def _read_yaml(path: Path, problems: list[str]):
    if not path.exists():
        return None
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        problems.append(f"{path.parent.name}/{path.name} unreadable: {' '.join(str(e).split())}")
        return None


def _int_or_none(value) -> int | None:
    try:
        return int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError, OverflowError):
        return None


def _number(value) -> int | float | None:
    """A measured number, or None (JSON null, NaN or anything that is not a number)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None


def summarize(runs: list[Run]) -> tuple[list[dict], list[dict]]:
    """(job rows, configuration rows). A configuration's numbers come from its *completed* runs
    only: return statistics over their final eval_return_mean, env_steps mean, wall_seconds total
    and mean; a failed or interrupted run's partial numbers would mix budgets. `failed` counts every
    run that did not complete (failed, interrupted, missing). std is across seeds (ddof=1); std and
    the 95% bootstrap CI are None with fewer than two returns. None means nothing to report."""
    job_rows = []
    for run in runs:
        r = run.results or {}
        status = str(r.get("status") or "unknown") if run.results is not None else "missing"
        row = {"job": run.job, "config": run.config, "seed": run.seed, "status": status}
        row.update({k: _number(r.get(k)) for k in JOB_COLUMNS[4:-1]})
        row["error"] = "; ".join(str(e) for e in (r.get("error"), run.error) if e) or None
        job_rows.append(row)
    groups: dict[str, list[dict]] = {}
    for row in job_rows:
        groups.setdefault(row["config"], []).append(row)
    return job_rows, [_config_row(config, rows) for config, rows in groups.items()]


def _config_row(config: str, rows: list[dict]) -> dict:
    done = [r for r in rows if r["status"] == "completed"]
    row = dict.fromkeys(CONFIG_COLUMNS)
    row.update(config=config, runs=len(rows), completed=len(done), failed=len(rows) - len(done))
    returns = [r["eval_return_mean"] for r in done if r["eval_return_mean"] is not None]
    if returns:
        row["return_mean"], row["return_std"] = mean_std(returns)
        row["return_iqm"] = iqm(returns)
        if len(returns) > 1:
            row["return_ci_low"], row["return_ci_high"] = bootstrap_ci(returns)
    steps = [r["env_steps"] for r in done if r["env_steps"] is not None]
    row["env_steps_mean"] = mean_std(steps)[0] if steps else None
    walls = [r["wall_seconds"] for r in done if r["wall_seconds"] is not None]
    if walls:
        row["wall_seconds_total"], row["wall_seconds_mean"] = sum(walls), sum(walls) / len(walls)
    return row


# ---- writing --------------------------------------------------------------------------------
def fmt(value, digits: int = 1) -> str:
    """A table cell: blank for None, `digits` decimals for floats, ints as they are."""
    if value is None:
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def return_cells(row: dict) -> list[str]:
    """A configuration row's return cells: mean ± std, IQM, 95% CI as [low, high]."""
    mean = fmt(row["return_mean"])
    if mean and row["return_std"] is not None:
        mean += f" ± {fmt(row['return_std'])}"
    ci = (f"[{fmt(row['return_ci_low'])}, {fmt(row['return_ci_high'])}]"
          if row["return_ci_low"] is not None else "")
    return [mean, fmt(row["return_iqm"]), ci]


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
    return [line(header), line(["---"] * len(header)), *map(line, rows)]


def one_line(text: str | None, width: int = 120) -> str:
    """An error message shortened to one line for a table cell."""
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[:width - 1] + "…"


def summary_markdown(sweep_dir: Path, job_rows: list[dict], config_rows: list[dict]) -> str:
    completed = sum(r["status"] == "completed" for r in job_rows)
    lines = [f"# {sweep_dir}: {len(job_rows)} jobs, {completed} completed, "
             f"{len(job_rows) - completed} failed", "",
             "(failed counts failed, interrupted and missing jobs)", ""]
    command = sweep_command(sweep_dir)
    if command:
        lines += [f"Sweep: `{command}` (the configurations below name what differs)", ""]
    lines += ["## Per configuration", "",
             "Final evaluation return over completed runs (std across seeds, ddof=1; "
             "95% percentile-bootstrap CI of the mean; both need two runs); steps and wall seconds "
             "are means per completed run.", ""]
    lines += markdown_table(
        ["config", "return (mean ± std)", "IQM", "95% CI", "steps", "wall s", "completed/runs"],
        [[r["config"], *return_cells(r), fmt(r["env_steps_mean"], 0), fmt(r["wall_seconds_mean"]),
          f"{r['completed']}/{r['runs']}"] for r in config_rows])
    lines += ["", "## Per job", ""]
    lines += markdown_table(
        ["job", "config", "seed", "status", "final return", "best", "steps", "wall s", "error"],
        [[r["job"], r["config"], fmt(r["seed"]), r["status"], fmt(r["eval_return_mean"]),
          fmt(r["best_eval_return_mean"]), fmt(r["env_steps"], 0), fmt(r["wall_seconds"]),
          one_line(r["error"])] for r in job_rows])
    return "\n".join(lines) + "\n"


def summary_csv(job_rows: list[dict], config_rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, restval="", lineterminator="\n")
    writer.writeheader()
    for kind, rows in (("job", job_rows), ("config", config_rows)):
        for row in rows:
            writer.writerow({"kind": kind, **{k: "" if v is None else v for k, v in row.items()}})
    return out.getvalue()


def write_summary(sweep_dir: Path | str) -> tuple[Path, Path]:
    """Write <sweep_dir>/summary.csv and summary.md (replacing earlier ones); their paths."""
    sweep_dir = Path(sweep_dir)
    runs = collect_runs(sweep_dir)
    if not runs:
        raise UserError(f"{sweep_dir} holds no run (no results.json and no job directories)")
    job_rows, config_rows = summarize(runs)
    csv_path, md_path = sweep_dir / "summary.csv", sweep_dir / "summary.md"
    write_atomic(csv_path, summary_csv(job_rows, config_rows))
    write_atomic(md_path, summary_markdown(sweep_dir, job_rows, config_rows))
    return csv_path, md_path
