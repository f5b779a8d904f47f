"""Batches drawn by the prefetch thread: the same batches in the same order, errors raised."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from medinfer.data.prefetch import prefetched


def _draw(n: int, fail_at: int | None = None) -> Iterator[tuple[int, str]]:
    for i in range(n):
        if i == fail_at:
            raise RuntimeError(f"bad batch {i}")
        yield i, threading.current_thread().name


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetch_keeps_order_and_content(depth: int) -> None:
    got = list(prefetched(_draw(7), depth))
    assert [i for i, _ in got] == list(range(7))
    threads = {name for _, name in got}
    assert threads == ({"batch-prefetch"} if depth else {threading.current_thread().name})


def test_a_producer_error_reaches_the_training_loop_at_its_batch() -> None:
    seen = []
    with pytest.raises(RuntimeError, match="bad batch 3"):
        for i, _ in prefetched(_draw(6, fail_at=3), 2):
            seen.append(i)
    assert seen == [0, 1, 2]


def test_stopping_early_ends_the_producer_thread() -> None:
    before = threading.active_count()
    gen = prefetched(_draw(1000), 2)
    assert next(gen)[0] == 0
    gen.close()  # the loop broke out: the producer must not stay blocked on a full queue
    assert threading.active_count() == before
