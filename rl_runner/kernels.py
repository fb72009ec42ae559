"""NumPy forward and backward passes for ParallelMLP, on the torch parameters' own memory.

At the batch sizes of on-policy learning (8 to a few hundred rows) torch's per-op dispatch and
autograd bookkeeping cost more than the arithmetic on a small CPU. These kernels compute the same
function on numpy views of the parameters (which FlatAdam keeps in one flat buffer) into
preallocated work arrays, and write gradients straight into the optimizer's flat gradient.
The larger matmuls and tanh go to torch's vectorized kernels, without autograd (`_bmm`,
`_tanh_`).
The torch modules stay the model of record: checkpoints, `load_state_dict`, and algorithms that
need autograd (e.g. double backprop) use them directly.
"""
from __future__ import annotations

import numpy as np
import torch

from rl_runner.nets import ParallelMLP


def _numpy_tanh_is_avx512() -> bool:
    """Whether numpy runs float32 tanh with its AVX-512 loop on this CPU (numpy >= 2.0 says)."""
    try:
        from numpy.lib.introspect import opt_func_info
        target = opt_func_info(func_name="^tanh$", signature="float32")["tanh"]["ff"]["current"]
    except (ImportError, KeyError, TypeError):
        return False
    return target == "X86_V4" or target.startswith("AVX512")


# numpy's float32 tanh without AVX-512 was scalar-speed code on an AMD Zen 1 (~230 us for
# [2, 256, 64]); torch's sigmoid is vectorized, and tanh(x) = 2 * sigmoid(2x) - 1 computed in
# place took ~95 us. Below this many elements numpy's tanh is faster (fewer calls).
_SIGMOID_TANH_MIN = 4096
# With its AVX-512 loop numpy's tanh took 5.8 us against the sigmoid's 12.8 (AMD EPYC Zen 5,
# one thread), so there it serves every size. A fixed rule per CPU, not a timing, so that runs
# on one host keep the same last bits.
_NUMPY_TANH_ONLY = _numpy_tanh_is_avx512()


def _view(t) -> np.ndarray:
    return t.detach().numpy()


def _bmm(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a @ b for stacked [K, n, m] @ [K, m, p] arrays (transposed views allowed).

    numpy's bundled OpenBLAS ran [2, 256, 64] @ [2, 64, 64] in ~210 us on an AMD Zen 1 (~410 us
    with the left side transposed, as in a weight gradient) and torch's MKL in ~135 us; on an AMD
    Zen 5 OpenBLAS took 39 us and torch 44 on one thread. torch's products give the same bits
    on one thread and on two (it splits the stack, not a matrix), OpenBLAS's do not, so the
    ThreadTuner's switches cannot part same-seed runs (numpy's BLAS stays on one thread:
    threads.set_threads). With any dimension under 32 numpy's lower per-call cost wins.
    """
    if min(a.shape[1], a.shape[2], b.shape[2]) >= 32:
        torch.bmm(torch.from_numpy(a), torch.from_numpy(b), out=torch.from_numpy(out))
    else:
        np.matmul(a, b, out=out)


def _tanh_(a: np.ndarray) -> None:
    """tanh in place on a float32 array (agrees with np.tanh to ~2e-7)."""
    if _NUMPY_TANH_ONLY or a.size < _SIGMOID_TANH_MIN:
        np.tanh(a, out=a)
        return
    np.multiply(a, 2.0, out=a)
    torch.from_numpy(a).sigmoid_()
    np.multiply(a, 2.0, out=a)
    np.subtract(a, 1.0, out=a)


class MLPKernel:
    """Evaluates a ParallelMLP ([K, B, out] for a [B, in] input) and backpropagates through it.

    The parameter views stay valid while the parameters are updated in place (optimizer steps,
    `load_state_dict`); build the kernel after the optimizer has moved them into its buffer.
    """

    def __init__(self, mlp: ParallelMLP, members: slice = slice(None)):
        """`members`: which of the K networks to evaluate (e.g. slice(1, 2): the critic alone);
        `backward` then takes gradient arrays of that slice."""
        self.ws = [_view(w)[members] for w in mlp.weights]
        self.bs = [_view(b)[members] for b in mlp.biases]
        self.relu = mlp.activation == "relu"
        self.k = len(range(mlp.k)[members])
        self._work: dict[int, dict[str, list[np.ndarray]]] = {}
        self._inputs: np.ndarray | None = None
        self._rows = 0

    def _buffers(self, rows: int) -> dict[str, list[np.ndarray]]:
        work = self._work.get(rows)
        if work is None:
            shapes = [(self.k, rows, w.shape[2]) for w in self.ws]
            work = {"h": [np.empty(s, np.float32) for s in shapes],
                    "g": [np.empty(s, np.float32) for s in shapes[:-1]],
                    "tmp": [np.empty(s, np.float32) for s in shapes[:-1]],
                    "ones": [np.ones((1, rows), np.float32)]}
            self._work[rows] = work
        return work

    def forward(self, x_BI: np.ndarray) -> np.ndarray:
        """Output [K, B, out]; a view into a work array reused by the next call of the same B."""
        x_BI = np.ascontiguousarray(x_BI, np.float32)
        work = self._buffers(x_BI.shape[0])
        h = x_BI
        last = len(self.ws) - 1
        for i, (w, b, out) in enumerate(zip(self.ws, self.bs, work["h"])):
            if i == 0:
                np.matmul(h, w, out=out)  # [B, I] @ [K, I, O] broadcasts to [K, B, O]
            else:
                _bmm(h, w, out)
            out += b
            if i < last:
                if self.relu:  # torch's: np.maximum took 6.9 us on [1, 64, 256], this 2.1
                    torch.from_numpy(out).relu_()
                else:
                    _tanh_(out)
            h = out
        self._inputs, self._rows = x_BI, x_BI.shape[0]
        return h

    def _activation_grad(self, a: np.ndarray, out: np.ndarray) -> np.ndarray:
        """The activation's derivative at the pre-activations whose outputs are `a`, into `out`."""
        if self.relu:
            np.greater(a, 0.0, out=out)
        else:  # tanh' = 1 - tanh^2
            np.multiply(a, a, out=out)
            np.subtract(1.0, out, out=out)
        return out

    def jvp(self, d_ws: list[np.ndarray], d_bs: list[np.ndarray]) -> np.ndarray:
        """Directional derivative [K, B, out] of the last forward's output when the parameters
        move along (d_ws, d_bs) (shaped like the weights and biases): forward-mode, one pass."""
        work = self._work[self._rows]
        t = None  # the tangent of the layer input (none for the observations)
        last = len(self.ws) - 1
        for i, (w, dw, db) in enumerate(zip(self.ws, d_ws, d_bs)):
            tz = np.matmul(self._inputs if i == 0 else work["h"][i - 1], dw)
            tz += db
            if t is not None:
                tz += np.matmul(t, w)
            if i < last:
                tz *= self._activation_grad(work["h"][i], work["tmp"][i])
            t = tz
        return t

    def backward(self, g_KBO: np.ndarray, grad_ws: list[np.ndarray],
                 grad_bs: list[np.ndarray]) -> None:
        """Gradients of the last forward's output, written (not added) into grad_ws / grad_bs."""
        work = self._work[self._rows]
        g = g_KBO
        for i in range(len(self.ws) - 1, -1, -1):
            if i == 0:
                np.matmul(self._inputs.T, g, out=grad_ws[0])  # [I, B] @ [K, B, O]
            else:
                _bmm(work["h"][i - 1].transpose(0, 2, 1), g, grad_ws[i])
            np.matmul(work["ones"][0], g, out=grad_bs[i])  # sum over rows, ~5x np.sum's speed
            if i == 0:
                break
            a, tmp, g_prev = work["h"][i - 1], work["tmp"][i - 1], work["g"][i - 1]
            _bmm(g, self.ws[i].transpose(0, 2, 1), g_prev)
            if self.relu:  # g where a > 0, else 0, in place (numpy's mask and product: 2x)
                t = torch.from_numpy(g_prev)
                torch.ops.aten.threshold_backward.grad_input(t, torch.from_numpy(a), 0,
                                                             grad_input=t)
            else:
                g_prev *= self._activation_grad(a, tmp)
            g = g_prev
