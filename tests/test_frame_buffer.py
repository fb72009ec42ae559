"""Image replay: frames stored once and rebuilt exactly, memory per transition, state, feeder."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch
import pytest

from rl_runner.errors import UserError
from rl_runner.frame_buffer import FrameReplay, ImageReplay
from rl_runner.replay import ReplayBuffer, ReplayFeeder, make_buffer
from rl_runner.sum_tree import Priorities
from tests.helpers.frame_env import make_frame_vec_env

S, H, W = 4, 6, 5


class Streams:
    """n envs of random frames stacked as FrameStackObservation stacks them (an episode's first
    observation repeats its first frame), ending at random by termination or truncation; each
    transition carries its number in its reward and action. `ends` (per step) and `stops` (per
    transition number) say where episodes ended, `stops` also where a restart cut one."""

    def __init__(self, n: int, seed: int, shape=(S, H, W), restart_p: float = 0.0):
        self.rng, self.n, self.shape = np.random.default_rng(seed), n, shape
        self.restart_p = restart_p
        self.stacks = np.stack([self.first() for _ in range(n)])
        self.left = self.rng.integers(1, 12, n)
        self.count = 0
        self.added: dict[int, tuple] = {}
        self.ends = np.zeros(n, bool)  # the last step's episode ends
        self.stops: dict[int, bool] = {}

    def first(self) -> np.ndarray:
        return np.repeat(self.frame()[None], self.shape[0], 0)

    def frame(self) -> np.ndarray:
        return self.rng.integers(0, 256, self.shape[1:], dtype=np.uint8)

    def step(self):
        n = self.n
        obs = self.stacks.copy()
        nxt = np.concatenate([obs[:, 1:], np.stack([self.frame() for _ in range(n)])[:, None]], 1)
        self.left -= 1
        ends = self.left == 0
        terminated = ends & (self.rng.random(n) < 0.5)  # else truncated
        ids = np.arange(self.count, self.count + n)
        self.count += n
        self.stacks = nxt.copy()
        for e in np.flatnonzero(ends):
            self.stacks[e] = self.first()
            self.left[e] = self.rng.integers(1, 12)
        self.restarted = restart = self.rng.random() < self.restart_p
        if restart:  # fresh episodes without an end (a resume)
            self.stacks = np.stack([self.first() for _ in range(n)])
        self.ends = ends
        for i, e in enumerate(ids):
            self.added[int(e)] = (obs[i], nxt[i], bool(terminated[i]))
            self.stops[int(e)] = bool(ends[i]) or restart
        return obs, ids.astype(np.float32)[:, None], ids.astype(np.float32), terminated, nxt


def check_samples(buf, streams: Streams, draws: int = 4000) -> set[int]:
    """Every sampled transition is exactly the one added; returns the numbers drawn."""
    batch = buf.sample(2, draws // 2, np.random.default_rng(1))
    assert batch.obs.dtype == batch.next_obs.dtype == np.uint8
    assert batch.obs.shape == (2, draws // 2, *streams.shape)
    ids = batch.rewards.reshape(-1).astype(int)
    np.testing.assert_array_equal(batch.actions.reshape(-1), ids)
    obs, nxt = batch.obs.reshape(-1, *streams.shape), batch.next_obs.reshape(-1, *streams.shape)
    term = batch.terminated.reshape(-1)
    for k, i in enumerate(ids):
        want_obs, want_next, want_term = streams.added[int(i)]
        np.testing.assert_array_equal(obs[k], want_obs, err_msg=f"obs of transition {i}")
        np.testing.assert_array_equal(nxt[k], want_next, err_msg=f"next_obs of transition {i}")
        assert term[k] == want_term
    return set(ids.tolist())


@pytest.mark.parametrize("n_envs, steps", [(1, 30), (3, 17), (3, 200), (4, 500)])
def test_every_sample_is_exactly_what_was_added(n_envs, steps):
    """Random episodes (1 to 11 steps) over several envs, terminations, truncations, restarts
    without an end, and the ring wrapping around (40 steps per env)."""
    streams = Streams(n_envs, seed=n_envs + steps, restart_p=0.02)
    buf = FrameReplay(40 * n_envs, (S, H, W), 1, n_envs)
    for _ in range(steps):
        buf.add(*streams.step())
    assert buf.size == min(steps, 40) * n_envs
    drawn = check_samples(buf, streams)
    held = set(range(streams.count - buf.size, streams.count))
    assert drawn <= held
    # rows at the ring's oldest end whose older frames were overwritten are never drawn
    assert len(held - drawn) <= ((S - 1) * n_envs if steps > 40 else 0)


def test_a_stream_that_starts_mid_episode_draws_only_whole_stacks():
    """A resume that restores the envs but not the buffer: the first rows have older frames no
    row holds; rows from the S-th on are whole."""
    streams = Streams(2, seed=5)
    for _ in range(3):
        streams.step()
    streams.left[:] = 50  # no end for a while: the first rows are mid-episode
    buf = FrameReplay(100, (S, H, W), 1, 2)
    for _ in range(10):
        buf.add(*streams.step())
    drawn = check_samples(buf, streams)
    first = streams.count - buf.size
    assert drawn == set(range(first + (S - 1) * 2, streams.count))


def test_episodes_of_one_step_grow_the_store_of_final_frames():
    streams = Streams(2, seed=3)
    buf = FrameReplay(600, (S, H, W), 1, 2)
    for _ in range(300):
        streams.left[:] = 1
        buf.add(*streams.step())
    assert len(buf.side) >= 600  # every row's next frame is a final one
    check_samples(buf, streams)


def test_memory_per_transition_is_about_one_frame():
    buf = FrameReplay(100_000, (4, 84, 84), 1, 8)
    per = buf.nbytes / buf.capacity
    assert 84 * 84 <= per < 84 * 84 + 24, per  # the frame, action, reward and small flags
    assert 1_000_000 * per < 8e9  # a 1M-transition Atari buffer fits in 8 GB
    # n-step returns add a byte (episode ends), prioritized replay a tree of float64 sums
    n_step = FrameReplay(100_000, (4, 84, 84), 1, 8, n_step=3)
    assert n_step.nbytes - buf.nbytes == n_step.capacity
    tree = Priorities(1_000_000, alpha=0.6).tree.tree.nbytes
    assert 1_000_000 * n_step.nbytes / n_step.capacity + tree < 7.1e9
    assert ImageReplay(1000, (3, 8, 8), 1).nbytes / 1000 >= 2 * 3 * 8 * 8


def test_buffers_are_chosen_by_the_observations():
    box = gym.spaces.Box(0, 255, (S, H, W), np.uint8)
    assert isinstance(make_buffer(box, 100, 1, 2), FrameReplay)
    last = gym.spaces.Box(0, 255, (H, W, 3), np.uint8)  # channels last: not a stack
    assert isinstance(make_buffer(last, 100, 1, 2), ImageReplay)
    vec = gym.spaces.Box(-1, 1, (5,), np.float32)
    assert isinstance(make_buffer(vec, 100, 1, 2), ReplayBuffer)
    with pytest.raises(UserError, match="buffer_size"):
        FrameReplay(8, (S, H, W), 1, 2)


def test_images_that_are_not_a_stack_go_whole_into_an_image_buffer():
    """Colour channels first: the feeder finds that next_obs[:-1] != obs[1:] on the first step
    and keeps whole uint8 observations from then on, rows stored before included."""
    rng = np.random.default_rng(0)
    streams = Streams(2, seed=9, shape=(3, H, W))
    buf = FrameReplay(60, (3, H, W), 1, 2)
    for _ in range(5):
        buf.add(*streams.step())
    img = buf.to_image_replay()
    assert isinstance(img, ImageReplay) and img.size == buf.size
    check_samples(img, streams)
    obs = rng.integers(0, 256, (2, 3, H, W), dtype=np.uint8)
    from rl_runner.frame_buffer import NotAFrameStack
    with pytest.raises(NotAFrameStack):
        buf.add(obs, np.zeros((2, 1), np.float32), np.zeros(2, np.float32), np.zeros(2, bool),
                rng.integers(0, 256, (2, 3, H, W), dtype=np.uint8))
    assert buf.size == 10  # nothing written


@pytest.mark.parametrize("steps", [7, 90])
def test_state_round_trip_continues_the_same_buffer(steps):
    streams = Streams(3, seed=steps, restart_p=0.05)
    a = FrameReplay(120, (S, H, W), 1, 3)
    for _ in range(steps):
        a.add(*streams.step())
    b = FrameReplay(120, (S, H, W), 1, 3)
    b.load_state_dict(a.state_dict())
    for _ in range(5):  # the newest rows' next frames and episode continuity carry over
        step = streams.step()
        a.add(*step)
        b.add(*step)
    for name in ("rewards", "frames", "start", "next_at"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    x, y = (buf.sample(1, 500, np.random.default_rng(2)) for buf in (a, b))
    for u, v in zip(x, y):
        np.testing.assert_array_equal(u, v)
    check_samples(b, streams)


def bad(state: dict, **changes) -> dict:
    return {**state, **changes}


def test_a_bad_saved_state_is_refused_naming_what_is_wrong():
    streams = Streams(2, seed=1)
    buf = FrameReplay(40, (S, H, W), 1, 2)
    for _ in range(25):
        buf.add(*streams.step())
    good = buf.state_dict()
    fresh = FrameReplay(40, (S, H, W), 1, 2)
    cases = [
        ("not a dict", "a frame replay buffer is a dict"),
        (bad(good, frames=good["frames"].astype(np.float32)), "frames \\(uint8\\)"),
        (bad(good, capacity=80), "does not fit \\(40, 2"),
        (bad(good, obs_shape=[S, H, W + 1]), "does not fit"),
        (bad(good, filled=3), "3 of 20 steps filled"),
        (bad(good, pos=25), "pos 25"),
        (bad(good, rewards=good["rewards"][:-1]), "shapes of rewards"),
        (bad(good, start=np.full_like(good["start"], 7)), "episode starts"),
        (bad(good, next_at=np.full_like(good["next_at"], -1)), "final-frame indices"),
        (bad(good, free=good["free"][:-1]), "final-frame indices"),
    ]
    for state, message in cases:
        with pytest.raises(ValueError, match=message):
            fresh.load_state_dict(state)
    fresh.load_state_dict(good)  # nothing was half-loaded by the refusals
    image = ImageReplay(10, (S, H, W), 1)
    with pytest.raises(ValueError, match="image replay buffer is a dict"):
        image.load_state_dict(good)


# ---- through the feeder -------------------------------------------------------------------------
class Stub:
    """What ReplayFeeder asks of an off-policy algorithm, with random Discrete actions."""

    n_steps, train_freq, gradient_steps, batch_size = 25, 25, 2, 16
    learning_starts, buffer_action_dim = 10_000, 1
    device = torch.device("cpu")  # Algorithm.device, the contract's default
    n_step, gamma, prioritized, per_alpha = 1, 0.99, False, 0.6  # OffPolicy's defaults

    def __init__(self, buffer_size: int):
        self.buffer_size = buffer_size

    def random_actions(self, n, rng):
        return rng.integers(0, 3, n)

    def to_env(self, actions):
        return actions


def test_the_feeder_keeps_frame_stack_env_data_as_frames_exactly():
    """A real FrameStackObservation env (time limit 20) over 3 envs: the buffer holds every
    transition exactly as the envs handed it over, final observations included."""
    envs = make_frame_vec_env(3)
    algo = Stub(buffer_size=3 * 30)
    feeder = ReplayFeeder(envs, algo, seed=0)
    assert isinstance(feeder.buffer, FrameReplay)
    seen: list[tuple] = []
    original = feeder.buffer.add

    def record(obs, actions, rewards, terminated, next_obs, ends=None):
        seen.append((obs.copy(), next_obs.copy(), terminated.copy()))
        original(obs, actions, rewards, terminated, next_obs, ends)

    feeder.buffer.add = record
    for _ in range(4):  # 100 steps: several episodes, the ring wraps
        feeder.collect(algo)
    buf = feeder.buffer
    n = buf.size // 3
    want_obs = np.stack([s[0] for s in seen[-n:]])  # [T, N, S, H, W], oldest first
    want_next = np.stack([s[1] for s in seen[-n:]])
    assert not np.array_equal(want_next[:-1], want_obs[1:])  # some episodes ended in there
    rank, env = np.divmod(np.arange(buf.size), 3)
    slots, valid = buf._walk(rank, env)
    obs = np.empty((buf.size, S, 12, 12), np.uint8)
    nxt = np.empty_like(obs)
    buf._gather(slots, env, obs, nxt)
    assert valid[3 * (S - 1):].all()
    np.testing.assert_array_equal(obs[valid], want_obs.reshape(-1, S, 12, 12)[valid])
    np.testing.assert_array_equal(nxt[valid], want_next.reshape(-1, S, 12, 12)[valid])
    envs.close()


def test_the_feeder_switches_to_whole_images_for_images_that_are_not_a_stack():
    from tests.helpers.offline_image_env import ENV_ID, SHAPE
    from rl_runner.envs import make_vec_env

    envs = make_vec_env(ENV_ID, 2)  # noise in every channel: the first step is not a shift
    algo = Stub(buffer_size=100)
    feeder = ReplayFeeder(envs, algo, seed=0)
    assert isinstance(feeder.buffer, FrameReplay)
    feeder.collect(algo)
    buf = feeder.buffer
    assert isinstance(buf, ImageReplay) and buf.size == 50
    within = np.flatnonzero(np.arange(48) // 2 % 10 != 9)  # episodes of 10 steps, 2 envs
    np.testing.assert_array_equal(buf.next_obs[within], buf.obs[within + 2])
    state = feeder.buffer_state()
    fresh = ReplayFeeder(envs, algo, seed=0)  # a resume: built for frames, given whole images
    fresh.load_buffer_state(state, "last.pt")
    assert isinstance(fresh.buffer, ImageReplay) and fresh.buffer.size == 50
    np.testing.assert_array_equal(fresh.buffer.obs, buf.obs)
    with pytest.raises(ValueError, match="float rows"):
        fresh.load_buffer_state({"data": np.zeros((1, 3), np.float32)}, "last.pt")
    assert buf.obs.shape[1:] == SHAPE
    envs.close()


@pytest.mark.parametrize("make", [lambda: FrameReplay(60, (S, H, W), 1, 2),
                                  lambda: ImageReplay(60, (S, H, W), 1)], ids=["frames", "images"])
def test_batches_sampled_into_given_arrays_are_the_same(make):
    """The GPU path samples into pinned arrays (`out`); what lands there is what sample returns."""
    streams = Streams(2, seed=4)
    buf = make()
    for _ in range(40):
        step = streams.step()
        buf.add(*step)
    plain = buf.sample(3, 8, np.random.default_rng(5), env_steps=7)
    out = buf.empty_batch(3, 8, np.zeros)
    into = buf.sample(3, 8, np.random.default_rng(5), env_steps=7, out=out)
    assert into.obs is out.obs and into.env_steps == 7
    for a, b in zip(plain, into):
        np.testing.assert_array_equal(a, b)


# ---- n-step returns and row numbers (prioritized replay) ----------------------------------------
@pytest.mark.parametrize("kind", ["frames", "images"])
@pytest.mark.parametrize("n_envs, steps", [(1, 30), (3, 200)])
def test_n_step_samples_follow_each_env_to_n_rewards_or_its_episode_end(n_envs, steps, kind):
    """Each sampled row's reward is gamma-discounted over its env's next rows (3 at most; fewer
    where the episode ended, a restart cut it or no later row is stored), with the next
    observation and terminated flag of the last of them (frames: rebuilt from those held).
    Frames see a restart in the stack; whole images are told (cut, as the feeder tells them)."""
    streams = Streams(n_envs, seed=steps, restart_p=0.1)
    make = FrameReplay if kind == "frames" else ImageReplay
    buf = make(40 * n_envs, (S, H, W), 1, n_envs, n_step=3, gamma=0.5)
    for _ in range(steps):
        buf.add(*streams.step(), streams.ends)
        if streams.restarted and kind == "images":
            buf.cut()
    batch = buf.sample(2, 1000, np.random.default_rng(1))
    ids = batch.actions.reshape(-1).astype(int)
    obs, nxt = batch.obs.reshape(-1, S, H, W), batch.next_obs.reshape(-1, S, H, W)
    rewards, steps_ = batch.rewards.reshape(-1), batch.steps.reshape(-1)
    term = batch.terminated.reshape(-1)
    stepped = set()
    for k, i in enumerate(ids):
        j, want, m = int(i), float(i), 1
        while m < 3 and not streams.stops[j] and j + n_envs < streams.count:
            j, m = j + n_envs, m + 1
            want += 0.5 ** (m - 1) * j
        stepped.add(m)
        assert (rewards[k], steps_[k]) == (pytest.approx(want), m), f"transition {i}"
        np.testing.assert_array_equal(obs[k], streams.added[int(i)][0])
        np.testing.assert_array_equal(nxt[k], streams.added[j][1], err_msg=f"transition {i}")
        assert term[k] == streams.added[j][2]
    assert stepped == {1, 2, 3}


def test_rows_drawn_by_number_are_exactly_the_drawable_ones():
    """Row numbers (slot x n_envs + env) name the rows uniform sampling draws by age: those
    `drawable` says have a whole stack, each the transition added there."""
    streams = Streams(3, seed=9, restart_p=0.05)
    buf = FrameReplay(40 * 3, (S, H, W), 1, 3)
    for _ in range(100):  # the ring wraps: its oldest rows lack older frames
        buf.add(*streams.step())
    rows = np.arange(buf.rows)
    whole = buf.drawable(rows[None])[0]
    assert 0 < (~whole).sum() < 20
    batch = buf.sample(1, int(whole.sum()), np.random.default_rng(0), idx=rows[whole][None])
    ids = batch.actions.reshape(-1).astype(int)
    for k, i in enumerate(ids):
        np.testing.assert_array_equal(batch.obs[0, k], streams.added[int(i)][0])
        np.testing.assert_array_equal(batch.next_obs[0, k], streams.added[int(i)][1])
    assert set(ids.tolist()) == check_samples(buf, streams, draws=20_000)
    newest = buf.newest(3)
    np.testing.assert_array_equal(buf.sample(1, 3, None, idx=newest[None]).actions.ravel(),
                                  np.arange(streams.count - 3, streams.count))


def test_n_step_state_keeps_the_episode_ends():
    streams = Streams(2, seed=2)
    a = FrameReplay(40, (S, H, W), 1, 2, n_step=3)
    for _ in range(25):
        a.add(*streams.step(), streams.ends)
    state = a.state_dict()
    assert state["ends"].shape == (20, 2) and state["ends"].any()
    b = FrameReplay(40, (S, H, W), 1, 2, n_step=3)
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.ends, a.ends)
    with pytest.raises(ValueError, match=r"ends \(uint8\)"):
        b.load_state_dict({k: v for k, v in state.items() if k != "ends"})
    with pytest.raises(ValueError, match="episode starts or ends"):
        b.load_state_dict(bad(state, ends=np.full_like(state["ends"], 2)))
    one_step = FrameReplay(40, (S, H, W), 1, 2)
    assert "ends" not in one_step.state_dict() and one_step.nbytes < a.nbytes
