"""rl-runner: a config-driven reinforcement-learning experiment runner."""
from rl_runner import threads as _threads

# before anything imports torch: its OpenMP threads sleep instead of spinning while they wait
# (rl_runner/threads.py; 2 threads were 10-40x slower than 1 with another process on a core)
_threads.wait_state = _threads.passive_openmp_wait()

__version__ = "0.1.0"
