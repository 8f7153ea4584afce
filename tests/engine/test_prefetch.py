"""The background batch builder: same batches in the same order, errors where they belong."""

import threading
import time

import numpy as np
import pytest

from nowcast_jax.engine.prefetch import BatchPrefetcher


def _batch(step: int) -> np.ndarray:
    return np.random.default_rng(step).normal(size=(4, 3))


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_batches_come_in_step_order_and_equal_the_direct_ones(depth):
    with BatchPrefetcher(_batch, 5, 12, depth) as batches:
        got = [batches.get(step) for step in range(5, 13)]
    for step, batch in zip(range(5, 13), got):
        np.testing.assert_array_equal(batch, _batch(step))


def test_builds_ahead_in_one_other_thread_at_most_depth_ahead():
    built, threads = [], set()

    def make(step):
        threads.add(threading.get_ident())
        built.append(step)
        return step

    with BatchPrefetcher(make, 1, 100, depth=2) as batches:
        deadline = time.monotonic() + 5
        while len(built) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        assert built == [1, 2]  # two ahead before any is asked for, and no more
        assert batches.get(1) == 1
        assert batches.get(2) == 2
    assert threading.get_ident() not in threads and len(threads) == 1
    assert built == sorted(built) and built[-1] <= 4  # closing cancelled the rest


def test_an_error_is_raised_by_the_get_of_its_step():
    def make(step):
        if step == 3:
            raise KeyError("no window for step 3")
        return step

    with BatchPrefetcher(make, 1, 5, depth=2) as batches:
        assert [batches.get(1), batches.get(2)] == [1, 2]
        with pytest.raises(KeyError, match="no window for step 3"):
            batches.get(3)


@pytest.mark.parametrize("depth", [0, 2])
def test_steps_out_of_order_or_past_the_last_are_refused(depth):
    with BatchPrefetcher(_batch, 1, 2, depth) as batches:
        with pytest.raises(ValueError, match="step 2 asked for; the next is 1"):
            batches.get(2)
        batches.get(1)
        batches.get(2)
        with pytest.raises(ValueError, match="step 3 asked for"):
            batches.get(3)


def test_negative_depth_is_refused():
    with pytest.raises(ValueError, match="depth=-1"):
        BatchPrefetcher(_batch, 1, 2, -1)
