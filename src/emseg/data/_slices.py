"""z selections of a volume (``"0:24"``, ``"0,5,9"``) as slice indices."""

from __future__ import annotations

__all__ = ["parse_slices"]


def parse_slices(text: str | None, depth: int) -> list[int]:
    """Turn a z selection into slice indices.

    ``"0:24"`` (Python range, end excluded), ``"3"``, ``"0,5,9"``, ``"0:10,20:25"``
    or ``None`` (all slices) -> sorted unique indices in ``[0, depth)``.
    """
    if text is None:
        return list(range(depth))
    indices: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if ":" in part:
                start, _, stop = part.partition(":")
                rng = range(int(start) if start else 0, int(stop) if stop else depth)
                indices.update(rng)
            else:
                indices.add(int(part))
        except ValueError:
            raise ValueError(f"cannot parse slice selection {text!r}: use e.g. '0:24' or '0,3,5'") from None
    bad = sorted(i for i in indices if not 0 <= i < depth)
    if bad:
        raise ValueError(f"slice selection {text!r} asks for z={bad[:5]} but the volume has {depth} slices (0..{depth - 1})")
    if not indices:
        raise ValueError(f"slice selection {text!r} selects no slices")
    return sorted(indices)
