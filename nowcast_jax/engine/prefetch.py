"""Training batches built ahead of the step that needs them, in one background thread.

A task's ``train_batch(step, batch_size, seed)`` is a pure function of its arguments, so
building batch ``n + 1`` while step ``n`` runs changes nothing but the time: the order is
the steps' order, and a resumed run sees the same batches as an uninterrupted one. One
worker thread builds (and places) the batches one after another, at most ``depth`` ahead;
an error raised while building batch ``n`` is raised again, unchanged, by ``get(n)``.
``depth=0`` builds each batch in the caller's thread when it is asked for.
"""

from __future__ import annotations

import collections
from concurrent import futures
from typing import Any, Callable


class BatchPrefetcher:
    """Batches of steps ``first .. last`` (inclusive) from ``make_batch(step)``, in order.

    Use as a context manager (or call :meth:`close`): on exit the batches not yet asked for
    are cancelled and the worker thread is joined.
    """

    def __init__(self, make_batch: Callable[[int], Any], first: int, last: int, depth: int = 2):
        if depth < 0:
            raise ValueError(f"depth={depth}: must be >= 0")
        self._make, self._next, self._last, self._depth = make_batch, first, last, depth
        self._pending: collections.deque[tuple[int, futures.Future]] = collections.deque()
        self._pool = futures.ThreadPoolExecutor(1, thread_name_prefix="nowcast-batches") if depth else None
        self._fill()

    def _fill(self) -> None:
        while self._pool is not None and len(self._pending) < self._depth and self._next <= self._last:
            self._pending.append((self._next, self._pool.submit(self._make, self._next)))
            self._next += 1

    def get(self, step: int):
        """The batch of ``step``; steps must be asked for in order, each once."""
        if self._pool is None:
            if step != self._next or step > self._last:
                raise ValueError(f"batch of step {step} asked for; the next is {self._next}")
            self._next += 1
            return self._make(step)
        if not self._pending or self._pending[0][0] != step:
            expected = self._pending[0][0] if self._pending else None
            raise ValueError(f"batch of step {step} asked for; the next is {expected}")
        _, future = self._pending.popleft()
        try:
            return future.result()
        finally:
            self._fill()

    def close(self) -> None:
        self._pending.clear()  # the pool's shutdown cancels those not started
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "BatchPrefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
