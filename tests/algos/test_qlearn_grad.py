"""QLearner's hand-written gradient (manual_backward, dqn's path; in torch ops and through the
numpy MLPKernel) against its autograd path: from the same weights on the same minibatches, every
option gives the same parameters, Adam moments, metrics and TD errors after several gradient
steps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from rl_runner.algos import qlearn
from rl_runner.algos.qlearn import QLearner
from rl_runner.batches import ReplayBatch

OBS, ACTIONS, G, B = 3, 4, 5, 16


@pytest.fixture(params=["torch", "numpy"])
def kernel(request) -> bool:
    """The hand-written step in torch ops, or through the numpy MLPKernel (dqn on the CPU)."""
    return request.param == "numpy"


def pair(numpy_kernel: bool = False, **kw) -> tuple[QLearner, QLearner]:
    """The autograd learner and the hand-written one, with the same initial weights."""
    args = dict(obs_dim=OBS, n_actions=ACTIONS, start=0, hidden_sizes=[32, 24], lr=3e-3,
                gamma=0.9, tau=1.0, seed=0, double_q=False, target_every_step=False)
    args.update(kw)
    learners = []
    for manual in (False, True):
        torch.manual_seed(0)
        learners.append(QLearner(**args, manual_backward=manual,
                                 numpy_kernel=manual and numpy_kernel))
    auto, manual = learners
    assert not auto.manual and manual.manual
    assert auto.kernel is None and (manual.kernel is not None) == numpy_kernel
    torch.testing.assert_close(auto.opt.flat, manual.opt.flat, rtol=0, atol=0)
    return auto, manual


def batches(seed: int = 0, **fields) -> list[ReplayBatch]:
    """Three batches of G minibatches; large rewards, so that some TD errors pass Huber's 1."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(3):
        base = ReplayBatch(rng.normal(size=(G, B, OBS)).astype(np.float32),
                           rng.integers(0, ACTIONS, (G, B, 1)).astype(np.float32),
                           (3 * rng.normal(size=(G, B))).astype(np.float32),
                           (rng.random((G, B)) < 0.2).astype(np.float32),
                           rng.normal(size=(G, B, OBS)).astype(np.float32), 0)
        extra = {k: f(rng) for k, f in fields.items()}
        out.append(base._replace(**extra))
    return out


def steps(rng):
    return rng.integers(1, 4, (G, B)).astype(np.float32)


def weights(rng):
    return rng.random((G, B)).astype(np.float32)


def indices(rng):
    return rng.integers(0, 1000, (G, B))


def run_both(auto: QLearner, manual: QLearner, data: list[ReplayBatch]) -> None:
    """Both learners through every batch, a hard target copy between batches, checking the
    metrics and TD errors on the way; then the parameters and Adam moments."""
    for i, batch in enumerate(data):
        if i:  # the target: a copy of the online network as it was after the last batch
            for q in (auto, manual):
                q.update_target()
        got, want = manual.update(batch), auto.update(batch)
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
        if batch.indices is None:
            assert manual.td_errors is None and auto.td_errors is None
        else:
            np.testing.assert_allclose(manual.td_errors, auto.td_errors, rtol=1e-4, atol=1e-5)
    assert manual.grad_steps == auto.grad_steps == G * len(data)
    assert not torch.equal(manual.opt.flat, manual.target.flat)
    for name in ("flat", "exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(getattr(manual.opt, name), getattr(auto.opt, name),
                                   rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(manual.target.flat, auto.target.flat, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("options", [
    {},
    {"double_q": True},
    {"dueling": True},
    {"dueling": True, "double_q": True, "activation": "tanh"},
    {"tau": 0.3, "target_every_step": True},
])
def test_hand_written_steps_match_autograd(options, kernel):
    auto, manual = pair(kernel, **options)
    run_both(auto, manual, batches())


def test_n_step_discounts_match_autograd(kernel):
    auto, manual = pair(kernel, double_q=True)
    run_both(auto, manual, batches(steps=steps))


def test_prioritized_weights_and_td_errors_match_autograd(kernel):
    auto, manual = pair(kernel, dueling=True)
    data = batches(weights=weights, indices=indices, steps=steps)
    data[0].weights[0, :4] = 0.0  # rows that send no gradient at all
    run_both(auto, manual, data)


def test_clipped_gradients_match_autograd(kernel):
    auto, manual = pair(kernel, max_grad_norm=0.05)
    norms = []
    clip = manual.opt.clip_grad_norm
    manual.opt.clip_grad_norm = lambda m: norms.append(clip(m)) or norms[-1]
    run_both(auto, manual, batches(weights=weights))
    assert len(norms) == 3 * G and min(norms) > 0.05  # the clip acted on every step


@pytest.mark.parametrize("double_q", [False, True])
def test_a_target_that_stands_still_is_run_once_an_update_on_every_minibatch(double_q,
                                                                              monkeypatch):
    """dqn's target network does not move within an update: its forward runs once on all G x B
    next observations, TARGET_ROWS rows at a time (the steps' results are checked against
    autograd above); cql's moves after every step and runs once a step."""
    monkeypatch.setattr(qlearn, "TARGET_ROWS", 32)
    for every_step, calls in ((False, [32, 32, G * B - 64]), (True, [B] * G)):
        _, manual = pair(double_q=double_q, target_every_step=every_step)
        rows = []
        forward = manual.target_forward
        manual.target_forward = lambda obs: rows.append(len(obs)) or forward(obs)
        manual.update(batches()[0])
        assert rows == calls


@pytest.mark.parametrize("double_q", [False, True])
def test_the_target_in_row_chunks_gives_the_one_forward_steps(double_q, monkeypatch):
    """Chunks of rows are the targets of one forward of all rows, in the same order."""
    learners = []
    for rows in (1 << 30, 24):  # one forward; chunks that split minibatches
        monkeypatch.setattr(qlearn, "TARGET_ROWS", rows)
        _, manual = pair(double_q=double_q, target_every_step=False)
        for i, batch in enumerate(batches(steps=steps)):
            if i:
                manual.update_target()
            manual.update(batch)
        learners.append(manual)
    # BLAS may round a product of other rows differently in the last bits (24-row chunks here)
    torch.testing.assert_close(learners[0].opt.flat, learners[1].opt.flat, rtol=1e-6, atol=1e-7)


def test_the_hand_written_gradient_is_refused_beside_a_critic_penalty():
    class Penalised(QLearner):
        def critic_penalty(self, obs_BD, next_obs_BD, q_KB, q_KBA):
            return q_KB.mean(), {}

    with pytest.raises(ValueError, match="critic_penalty"):
        Penalised(obs_dim=OBS, n_actions=ACTIONS, start=0, hidden_sizes=[8], lr=1e-3,
                  gamma=0.9, tau=1.0, seed=0, manual_backward=True)
    assert not Penalised(obs_dim=OBS, n_actions=ACTIONS, start=0, hidden_sizes=[8], lr=1e-3,
                         gamma=0.9, tau=1.0, seed=0).manual


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hand_written_steps_on_the_gpu_match_autograd_on_the_cpu():
    auto, _ = pair(dueling=True, double_q=True)
    torch.manual_seed(0)
    gpu = QLearner(obs_dim=OBS, n_actions=ACTIONS, start=0, hidden_sizes=[32, 24], lr=3e-3,
                   gamma=0.9, tau=1.0, seed=0, dueling=True, double_q=True,
                   target_every_step=False, manual_backward=True, device=torch.device("cuda"))
    for batch in batches(weights=weights, indices=indices, steps=steps):
        gpu.update(batch)
        auto.update(batch)
        np.testing.assert_allclose(gpu.td_errors, auto.td_errors, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(gpu.opt.flat.cpu(), auto.opt.flat, rtol=1e-3, atol=1e-5)
