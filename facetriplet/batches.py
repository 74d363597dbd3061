"""The one way a sequence is cut into batches (detector calls, embedding batches, Beam chunks)."""

from __future__ import annotations

from typing import Iterator, Sequence, TypeVar

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
  """`items` cut in order into runs of `size` (the last may be shorter)."""
  if size < 1:
    raise ValueError(f"chunk size {size} must be at least 1")
  for i in range(0, len(items), size):
    yield items[i : i + size]
