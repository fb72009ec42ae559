"""`rl-report <dir>`: learning curves of one run or a sweep, one line per configuration (the mean
over its seeds, shaded by a 95% bootstrap band), drawn to report.png and embedded in report.md
with the final-return table of rl_runner.summary."""
from __future__ import annotations

import argparse
import datetime
import io
import sys
from pathlib import Path

import numpy as np

from rl_runner.errors import UserError
from rl_runner.fileio import write_atomic
from rl_runner.stats import bootstrap_ci
from rl_runner.summary import Run, collect_runs, markdown_table, return_cells, summarize

# resamples per step of the curve band: hundreds of steps x 10k resamples would be slow for a plot
BAND_RESAMPLES = 2000

Curve = tuple[np.ndarray, np.ndarray]  # (steps, values), steps increasing


class ReportArgumentParser(argparse.ArgumentParser):
    """argparse with the house bad-input contract: one `rl-report: error: ...` line, exit 2."""

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def read_curve(tb_dir: Path, tag: str) -> Curve | None:
    """`tag`'s scalars from every event file in `tb_dir` (a resumed run writes several), or None
    when there are none. A step written twice keeps its last value."""
    if not tb_dir.is_dir():
        return None
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if tag not in acc.Tags().get("scalars", []):
        return None
    points = {e.step: e.value for e in acc.Scalars(tag) if np.isfinite(e.value)}
    if not points:
        return None
    steps = np.array(sorted(points), dtype=float)
    return steps, np.array([points[s] for s in sorted(points)], dtype=float)


def curve_band(curves: list[Curve], confidence: float = 0.95,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps, mean, low, high) of several runs' curves on the union of their steps.

    Each run is interpolated linearly only inside its own step range; a step's mean is over the
    runs that cover it, and (low, high) is the percentile-bootstrap CI of that mean across those
    runs, NaN where fewer than two cover the step (one seed has no spread to show).
    """
    steps = np.unique(np.concatenate([s for s, _ in curves]))
    values_RS = np.full((len(curves), len(steps)), np.nan)
    for i, (s, v) in enumerate(curves):
        inside = (steps >= s[0]) & (steps <= s[-1])
        values_RS[i, inside] = np.interp(steps[inside], s, v)
    mean, low, high = (np.full(len(steps), np.nan) for _ in range(3))
    for j in range(len(steps)):
        covering = values_RS[~np.isnan(values_RS[:, j]), j]
        mean[j] = covering.mean()
        if covering.size > 1:
            low[j], high[j] = bootstrap_ci(covering, confidence=confidence,
                                           resamples=BAND_RESAMPLES, seed=seed)
    return steps, mean, low, high


# the offline algorithms of the releases whose results.json had no step_unit
LEGACY_OFFLINE = {"bc", "cql"}


def step_label(runs: list[Run]) -> str:
    """The x axis, from what each run's results.json says its steps count (`step_unit`: env
    steps, or gradient steps for an offline algorithm); runs without results are left out."""
    units: dict[str, set[str]] = {}
    for r in runs:
        res = r.results or {}
        unit = res.get("step_unit")
        if unit is None and "algo" in res:  # written before results.json said it
            unit = "gradient steps" if res["algo"] in LEGACY_OFFLINE else "env steps"
        if isinstance(unit, str):
            units.setdefault(unit, set()).add(str(res.get("algo")))
    if len(units) == 1:
        return next(iter(units))
    if not units:
        return "steps"
    parts = "; ".join(f"{unit} for {', '.join(sorted(algos))}"
                      for unit, algos in sorted(units.items()))
    return f"steps ({parts})"


def plot_png(bands: dict[str, tuple], counts: dict[str, int], xlabel: str, ylabel: str,
             title: str) -> bytes:
    """The figure as PNG bytes: one mean line and CI band per configuration."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for config, (steps, mean, low, high) in bands.items():
        n = counts[config]
        (line,) = ax.plot(steps, mean, marker="o" if len(steps) == 1 else None,
                          label=f"{config} ({n} seed{'s' if n != 1 else ''})")
        ax.fill_between(steps, low, high, where=~np.isnan(low), color=line.get_color(),
                        alpha=0.2, linewidth=0)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return buf.getvalue()


def report_markdown(root: Path, tag: str, xlabel: str, runs: list[Run],
                    no_points: list[Run]) -> str:
    _, config_rows = summarize(runs)
    made = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [f"# Report: {'/'.join(root.resolve().parts[-2:])}", "",
             f"Made {made} from `{root}`. Curves: `{tag}` against {xlabel}, the mean over seeds "
             "with a 95% bootstrap band (none where only one run covers a step).", "",
             "![learning curves](report.png)", "",
             "## Final evaluation return per configuration", "",
             "Over completed runs (results.json's eval_return_mean); std across seeds (ddof=1).",
             ""]
    lines += markdown_table(["config", "return (mean ± std)", "IQM", "95% CI", "completed/runs"],
                            [[r["config"], *return_cells(r), f"{r['completed']}/{r['runs']}"]
                             for r in config_rows])
    if no_points:
        lines += ["", *[f"- `{r.job}`: no {tag} points" for r in no_points]]
    return "\n".join(lines) + "\n"


def make_report(root: Path | str, tag: str = "eval/return_mean",
                out: Path | str | None = None) -> tuple[Path, Path]:
    """Write report.png and report.md for the run or sweep `root` into `out` (default: root)."""
    root = Path(root)
    runs = collect_runs(root)
    if not runs:
        raise UserError(f"{root} holds no run (no results.json and no job directories)")
    curves: dict[str, list[Curve]] = {}
    with_points, no_points = [], []
    for run in runs:
        curve = read_curve(run.path / "tb", tag)
        (with_points if curve else no_points).append(run)
        if curve:
            curves.setdefault(run.config, []).append(curve)
    if not curves:
        raise UserError(f"no run under {root} has {tag} points")
    out = Path(out) if out is not None else root
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    xlabel = step_label(with_points)
    bands = {config: curve_band(cs) for config, cs in curves.items()}
    # the title: the sweep's <date>/<time> (or the run's <date>/<time>_<algo>_<env>_s<seed>)
    png = plot_png(bands, {c: len(cs) for c, cs in curves.items()}, xlabel, tag,
                   "/".join(root.resolve().parts[-2:]))
    png_path, md_path = out / "report.png", out / "report.md"
    write_atomic(png_path, png)
    write_atomic(md_path, report_markdown(root, tag, xlabel, runs, no_points))
    return png_path, md_path


def main(argv: list[str] | None = None) -> None:
    parser = ReportArgumentParser(
        prog="rl-report", description="Learning curves (mean and 95% bootstrap band over seeds "
        "per configuration) of a run or sweep directory, written to report.png and report.md.")
    parser.add_argument("dir", help="a run directory or a sweep (rl-run -m) directory")
    parser.add_argument("--tag", default="eval/return_mean", help="the TensorBoard scalar to plot")
    parser.add_argument("--out", default=None, help="folder for the report (default: the dir)")
    args = parser.parse_args(argv)
    try:
        paths = make_report(args.dir, args.tag, args.out)
    except UserError as e:
        parser.error(str(e))
    for path in paths:
        print(path)


if __name__ == "__main__":
    main()
