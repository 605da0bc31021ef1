"""Default chunk shapes and block iteration for chunked writers."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

# (Z, Y, X) chunks suit blockwise 2-D/2.5-D/3-D patches on anisotropic EM; (Y, X) for 2-D.
_DEFAULT_3D = (32, 256, 256)
_DEFAULT_2D = (512, 512)


def default_chunks(shape: Sequence[int]) -> tuple[int, ...]:
    """Default chunk shape: ``(32, 256, 256)`` for ``(Z, Y, X)``, ``(512, 512)`` for ``(Y, X)``, clipped to ``shape``."""
    base = _DEFAULT_3D if len(shape) == 3 else _DEFAULT_2D
    return tuple(max(1, min(int(c), int(s))) for c, s in zip(base, shape))


_COUNT_WORDS = {1: "one", 2: "two", 3: "three"}


def positive_tuple(value: Any, *, name: str, count: int, kind: type = int, meaning: str = "(z, y, x)") -> tuple | None:
    """``None``, or ``value`` as ``count`` positive finite numbers of ``kind`` (``int`` or ``float``).

    The one check behind chunk shapes, block shapes and voxel sizes given by a user.

    Raises:
        ValueError: naming ``name``, what is expected (``meaning`` says what the values are) and the value received.
    """
    if value is None:
        return None
    noun = "ints" if kind is int else "numbers"
    expected = f"{name} must be None or {_COUNT_WORDS.get(count, count)} positive {noun} {meaning}, got {value!r}"
    try:
        values = tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(expected) from None
    if len(values) != count or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(expected)
    return values


def validate_chunks(chunks: Sequence[int] | None, shape: Sequence[int]) -> tuple[int, ...] | None:
    """Check ``chunks`` has one positive int per axis of ``shape``.

    Raises:
        ValueError: naming ``chunks``, the value received and the value expected.
    """
    return positive_tuple(chunks, name="chunks", count=len(shape),
                          meaning=f"(one per axis of an array of shape {tuple(int(s) for s in shape)})")


def iter_blocks(shape: Sequence[int], chunks: Sequence[int] | None) -> Iterator[tuple[slice, ...]]:
    """Yield index tuples covering ``shape`` in slabs of whole chunks along the first axis.

    Copying slab by slab keeps memory bounded when the source is a lazy array.
    """
    if len(shape) == 0 or any(s == 0 for s in shape):
        return
    step = int(chunks[0]) if chunks else int(shape[0])
    if len(shape) == 3:
        # Slabs of whole chunk rows along Z; Y and X whole (a few chunks' worth of memory).
        for z0 in range(0, int(shape[0]), step):
            yield (slice(z0, min(z0 + step, int(shape[0]))), slice(None), slice(None))
    else:
        yield tuple(slice(None) for _ in shape)


__all__ = ["default_chunks", "iter_blocks", "positive_tuple", "validate_chunks"]
