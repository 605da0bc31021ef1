"""Default chunk shapes and block iteration for chunked writers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

# (Z, Y, X) chunks suit blockwise 2-D/2.5-D/3-D patches on anisotropic EM; (Y, X) for 2-D.
_DEFAULT_3D = (32, 256, 256)
_DEFAULT_2D = (512, 512)


def default_chunks(shape: Sequence[int]) -> tuple[int, ...]:
    """Default chunk shape: ``(32, 256, 256)`` for ``(Z, Y, X)``, ``(512, 512)`` for ``(Y, X)``, clipped to ``shape``."""
    base = _DEFAULT_3D if len(shape) == 3 else _DEFAULT_2D
    return tuple(max(1, min(int(c), int(s))) for c, s in zip(base, shape))


def validate_chunks(chunks: Sequence[int] | None, shape: Sequence[int]) -> tuple[int, ...] | None:
    """Check ``chunks`` has one positive int per axis of ``shape``.

    Raises:
        ValueError: naming ``chunks``, the value received and the value expected.
    """
    if chunks is None:
        return None
    try:
        out = tuple(int(c) for c in chunks)
    except (TypeError, ValueError):
        raise ValueError(f"chunks must be None or a tuple of {len(shape)} positive ints, got {chunks!r}") from None
    if len(out) != len(shape) or any(c < 1 for c in out):
        raise ValueError(
            f"chunks must be None or a tuple of {len(shape)} positive ints (one per axis of an array "
            f"of shape {tuple(shape)}), got {chunks!r}"
        )
    return out


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


__all__ = ["default_chunks", "iter_blocks", "validate_chunks"]
