"""rl-report on synthetic runs: event files written with torch's SummaryWriter, as the trainer's."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from torch.utils.tensorboard import SummaryWriter

from rl_runner.report import curve_band, main, read_curve, step_label
from rl_runner.stats import bootstrap_ci, iqm, mean_std
from rl_runner.summary import Run, collect_runs
from tests.conftest import tool_error

TAG = "eval/return_mean"
STEPS = [0, 100, 200, 300]


def write_scalars(tb_dir: Path, points: list[tuple[int, float]], purge_step: int | None = None):
    writer = SummaryWriter(str(tb_dir), purge_step=purge_step)
    for step, value in points:
        writer.add_scalar(TAG, value, step)
        writer.add_scalar("charts/episodic_return", value, step)
    writer.close()


def make_run(run_dir: Path, overrides: list[str] | None, final: float, slope: float,
             seed: int, algo: str = "ppo", tb: bool = True) -> None:
    """A finished run: a straight learning curve ending at `final`, and its results.json."""
    run_dir.mkdir(parents=True)
    if overrides is not None:
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if tb:
        write_scalars(run_dir / "tb", [(s, final - slope * (STEPS[-1] - s)) for s in STEPS])
    (run_dir / "results.json").write_text(json.dumps({
        "algo": algo, "step_unit": "gradient steps" if algo in ("bc", "cql") else "env steps",
        "env": "cartpole", "seed": seed, "env_steps": STEPS[-1], "wall_seconds": 1.0,
        "eval_return_mean": final, "eval_return_std": 1.0, "best_eval_return_mean": final,
        "status": "completed"}))


@pytest.fixture
def sweep(tmp_path) -> Path:
    """Two configurations: ppo with 3 seeds, pg with 2 (one more pg job logged no curve)."""
    root = tmp_path / "10-00-00"
    finals = {"ppo": [100.0, 120.0, 90.0], "pg": [40.0, 60.0]}
    job = 0
    for algo, values in finals.items():
        for seed, final in enumerate(values):
            make_run(root / f"{job}_{algo}_cartpole_s{seed}",
                     [f"algo={algo}", "env=cartpole", f"seed={seed}"], final, 0.1 * (seed + 1),
                     seed, algo)
            job += 1
    make_run(root / f"{job}_pg_cartpole_s9", ["algo=pg", "env=cartpole", "seed=9"], 0.0, 0.0, 9,
             "pg", tb=False)
    return root


def md_rows(md: str) -> list[list[str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")][2:]
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines]


def assert_png(path: Path) -> tuple[int, int]:
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(str(path)).shape[:2]
    assert 400 <= width <= 2000 and 300 <= height <= 2000
    return width, height


def test_curve_band_hand_numbers():
    a = (np.array([0.0, 100.0]), np.array([0.0, 10.0]))
    b = (np.array([0.0, 100.0]), np.array([2.0, 12.0]))
    steps, mean, low, high = curve_band([a, b])
    assert steps.tolist() == [0, 100] and mean.tolist() == [1, 11]
    # resampled means of two values x < y: x, (x+y)/2, y with p 1/4, 1/2, 1/4: CI = [x, y]
    assert low.tolist() == [0, 10] and high.tolist() == [2, 12]


def test_curve_band_interpolates_only_inside_each_run():
    a = (np.array([0.0, 100.0, 200.0]), np.array([0.0, 10.0, 20.0]))
    b = (np.array([0.0, 50.0]), np.array([4.0, 8.0]))  # b stops at 50, a never logged 50
    steps, mean, low, high = curve_band([a, b])
    assert steps.tolist() == [0, 50, 100, 200]
    assert mean.tolist() == [2, 6.5, 10, 20]  # at 50: a interpolated (5), b (8)
    assert np.isnan(low[2:]).all() and np.isnan(high[2:]).all()  # one run: no band
    assert (low[1], high[1]) == bootstrap_ci([5.0, 8.0], resamples=2000)


def test_read_curve_joins_a_resumed_runs_event_files(tmp_path):
    tb = tmp_path / "tb"
    write_scalars(tb, [(0, 1.0), (100, 2.0), (200, 3.0)])
    write_scalars(tb, [(200, 30.0), (300, 40.0)], purge_step=200)  # resumed from step 200
    assert len(list(tb.glob("events.out.tfevents.*"))) == 2
    steps, values = read_curve(tb, TAG)
    assert steps.tolist() == [0, 100, 200, 300] and values.tolist() == [1, 2, 30, 40]
    assert read_curve(tb, "eval/nope") is None and read_curve(tmp_path / "none", TAG) is None


def test_sweep_report(sweep, capsys):
    main([str(sweep)])
    png, md_path = sweep / "report.png", sweep / "report.md"
    assert capsys.readouterr().out.split() == [str(png), str(md_path)]
    assert_png(png)
    md = md_path.read_text()
    assert md.startswith(f"# Report: {sweep.parent.name}/10-00-00\n")
    assert "![learning curves](report.png)" in md
    assert f"`{TAG}` against env steps" in md
    rows = {r[0]: r for r in md_rows(md)}
    for config, returns, runs in (("algo=ppo", [100.0, 120.0, 90.0], "3/3"),
                                  ("algo=pg", [40.0, 60.0, 0.0], "3/3")):
        mean, std = mean_std(returns)
        low, high = bootstrap_ci(returns)
        assert rows[config] == [config, f"{mean:.1f} ± {std:.1f}", f"{iqm(returns):.1f}",
                                f"[{low:.1f}, {high:.1f}]", runs]
    assert f"- `5_pg_cartpole_s9`: no {TAG} points" in md
    assert not list(sweep.glob("*.tmp"))


def test_single_run_report_into_another_folder(tmp_path, capsys):
    run = tmp_path / "run"
    make_run(run, None, 50.0, 0.1, 0, algo="bc")
    out = tmp_path / "reports" / "bc"
    main([str(run), "--out", str(out), "--tag", TAG])
    assert_png(out / "report.png")
    md = (out / "report.md").read_text()
    assert "against gradient steps" in md  # bc is offline: its steps are gradient steps
    assert md_rows(md) == [["defaults", "50.0", "50.0", "", "1/1"]]
    assert not (run / "report.md").exists()


def test_step_label_reads_each_runs_step_unit():
    def run(algo, unit):
        return Run(Path("."), "j", "c", 0, {"algo": algo, "step_unit": unit})
    offline = [run("cql", "gradient steps"), run("bc", "gradient steps")]
    assert step_label(offline) == "gradient steps"
    assert step_label([run("ppo", "env steps"), Run(Path("."), "j", "c", 0, None)]) == "env steps"
    mixed = step_label([run("ppo", "env steps"), run("myoffline", "gradient steps")])
    assert mixed == "steps (env steps for ppo; gradient steps for myoffline)"
    # results.json of earlier releases, without step_unit
    assert step_label([Run(Path("."), "j", "c", 0, {"algo": "bc"})]) == "gradient steps"
    assert step_label([Run(Path("."), "j", "c", 0, {"algo": "ppo"})]) == "env steps"


def test_bad_input_is_one_line(tmp_path, capsys):
    line = tool_error(capsys, main, [str(tmp_path / "nope")], "rl-report")
    assert "does not exist" in line
    assert "holds no run" in tool_error(capsys, main, [str(tmp_path)], "rl-report")
    tool_error(capsys, main, [str(tmp_path), "--colour"], "rl-report")  # argparse's own errors
    make_run(tmp_path / "run", None, 1.0, 0.0, 0, tb=False)
    assert f"has {TAG} points" in tool_error(capsys, main, [str(tmp_path / "run")], "rl-report")
    assert not (tmp_path / "run" / "report.md").exists()
    assert [r.job for r in collect_runs(tmp_path / "run")] == ["run"]
