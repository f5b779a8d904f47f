"""Peak Python allocations of a block (tracemalloc), for the memory-bound tests."""

from __future__ import annotations

import tracemalloc
from typing import Self


class Peak:
    """``with Peak() as p:`` ... ``p.bytes``: the most memory allocated inside (tracemalloc)."""

    bytes = 0

    def __enter__(self) -> Self:
        tracemalloc.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bytes = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
