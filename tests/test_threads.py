"""trainer.torch_threads=auto under load: the ThreadTuner keeps the thread count measured fastest
(a fake clock stands in for the machine; no timing is asserted)."""
from __future__ import annotations

import torch

from rl_runner import threads
from rl_runner.threads import ThreadTuner


class Machine:
    """A clock and an update whose cost depends on the torch threads it runs with."""

    def __init__(self, cost: dict[int, float], slow: tuple[float, float, float] | None = None):
        """`slow`: (start, end, factor), a while in which every update takes factor x longer
        (the machine slowed down by others' work, whatever the thread count)."""
        self.now, self.cost, self.ran, self.slow = 0.0, cost, [], slow

    def clock(self) -> float:
        return self.now

    def update(self) -> int:
        n = torch.get_num_threads()
        self.ran.append(n)
        factor = 1.0
        if self.slow is not None and self.slow[0] <= self.now < self.slow[1]:
            factor = self.slow[2]
        self.now += self.cost[n] * factor
        return n


def run(tuner: ThreadTuner, machine: Machine, seconds: float) -> list[int]:
    start = len(machine.ran)
    end = machine.now + seconds
    while machine.now < end:
        tuner.run(machine.update)
    return machine.ran[start:]


def test_idle_keeps_several_threads_and_probes_less_and_less():
    machine = Machine({1: 0.010, 2: 0.006})
    tuner = ThreadTuner(2, clock=machine.clock)
    ran = run(tuner, machine, 120.0)
    assert tuner.current == 2
    assert ran.count(1) <= 3 * 6  # probes at ~0, 5, 15, 35, 75 s: three one-thread updates each
    assert tuner.interval == threads.MAX_INTERVAL


def test_a_busy_core_switches_to_one_thread_after_one_slow_update():
    machine = Machine({1: 0.010, 2: 0.400})
    tuner = ThreadTuner(2, clock=machine.clock)
    ran = run(tuner, machine, 120.0)
    assert ran[:3] == [1, 2, 1]  # the probe gave up at the first slow update
    assert tuner.current == 1
    slow = ran.count(2)
    assert slow * 0.400 < 0.05 * 120  # probes cost under 5% of the time
    machine.cost = {1: 0.010, 2: 0.006}  # the other process ended: back to two threads
    run(tuner, machine, 130.0)
    assert tuner.current == 2
    threads.set_threads(1)



def test_a_count_only_a_little_faster_does_not_take_over():
    """Probe noise on an idle machine (either count within SWITCH_MARGIN of the other) leaves
    the count in use alone, so that a run does not flip back and forth; a clear difference
    still switches."""
    for two_threads, want in ((0.0105, 2), (0.012, 2), (0.014, 1)):
        machine = Machine({1: 0.010, 2: two_threads})
        tuner = ThreadTuner(2, clock=machine.clock)
        ran = run(tuner, machine, 60.0)
        assert tuner.current == want, two_threads
        assert ran.count(want) > 0.95 * len(ran)
    machine.cost = {1: 0.010, 2: 0.009}  # two threads now 1.1x faster: one thread stays
    run(tuner, machine, 130.0)
    assert tuner.current == 1
    threads.set_threads(1)


def test_a_machine_slowing_down_in_the_middle_of_a_probe_does_not_switch():
    """Probe updates alternate between the counts and are compared pair by pair: a slow spell
    from the fourth update on (2.5x for both counts) leaves the faster count in use. Timed as
    blocks (one thread three times, then two threads three times), every two-thread update
    fell in the spell and one thread looked 1.5x faster."""
    machine = Machine({1: 0.010, 2: 0.006}, slow=(0.026, 0.5, 2.5))
    tuner = ThreadTuner(2, clock=machine.clock)
    ran = run(tuner, machine, 4.0)
    assert ran[:6] == [1, 2, 1, 2, 1, 2]
    assert tuner.current == 2 and set(ran[6:]) == {2}
    threads.set_threads(1)


def test_results_report_the_chosen_count_when_the_run_ends_inside_a_probe(tmp_path):
    from types import SimpleNamespace

    from rl_runner.results import write_results

    before = torch.get_num_threads()
    machine = Machine({1: 0.010, 2: 0.006})
    tuner = ThreadTuner(2, clock=machine.clock)
    try:
        tuner.run(machine.update)  # the first probe's first update: one thread
        assert tuner.current == 1 and tuner.chosen == 2
        t = SimpleNamespace(
            last_eval=None, algo_name="ppo", env_steps=8, wall_before=0.0, last_eval_step=0,
            best_eval=None, run_dir=tmp_path, tuner=tuner, threads=2, stop_signal=None,
            algo=SimpleNamespace(family="on_policy", step_unit="env steps", grad_steps=1,
                                 device="cpu"),
            cfg=SimpleNamespace(env=SimpleNamespace(name="breakout", id="Breakout"), seed=0),
            tcfg=SimpleNamespace(total_steps=8))
        assert write_results(t, "completed", 1.0, 0, None)["torch_threads"] == 2
    finally:
        threads.set_threads(before)
