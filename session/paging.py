"""Page ends for reading a large prefix: each limited range spans about one page of keys.

Why: etcd 3.5 counts every key left in a range on each limited request (etcd-io/etcd#11057): paging
a prefix of N keys with ``limit=L`` and the prefix's end as every page's end costs N + (N - L) +
(N - 2L) + ... = O(N^2 / L): at 100k collections, seconds where a linear read takes a fraction of
one. Here the end of each page is a *guess*, made from the keys already read, of where the next
``page`` keys end; etcd answers ``count`` (the keys in the guessed range), so each guess corrects the next: a range
that held too many keys shrinks the next one, one that held too few grows it. Every request then
counts about a page of keys, and a whole read costs O(N) (one full count at the start, to learn the
size, and a constant factor per page).

The guesses treat keys as numbers: the bytes after the prefix, padded right to :data:`WIDTH` bytes,
read big-endian, which orders them as etcd does. Only the estimate depends on that; the ranges
themselves always tile the prefix exactly (each starts where the previous one ended, or just after
its last key when it held more than a page), so no key is missed or read twice whatever the keys.
"""

from __future__ import annotations

__all__ = ["WIDTH", "SpanGuess"]

#: Bytes of a key (after the prefix) that count for the estimate; longer keys compare by these.
WIDTH = 48
_MAX = (1 << (8 * WIDTH)) - 1


def key_number(suffix: bytes) -> int:
    """The key's bytes after the prefix as a number that orders like the key (right-padded, truncated)."""
    return int.from_bytes(suffix[:WIDTH].ljust(WIDTH, b"\x00"), "big")


def number_key(number: int) -> bytes:
    """The shortest suffix whose :func:`key_number` is ``number`` (trailing zero bytes dropped)."""
    return min(number, _MAX).to_bytes(WIDTH, "big").rstrip(b"\x00")


class SpanGuess:
    """Guesses, page after page, a range end holding about ``page`` keys."""

    def __init__(self, prefix: bytes, page: int) -> None:
        self.prefix = prefix
        self.page = page
        self.span = 0  # in key numbers; 0 until the first page gave a density

    def learn(self, suffixes: list[bytes], span: int | None = None, count: int | None = None) -> None:
        """Update from what a range held: the suffixes of the keys it returned, or (``span``, ``count``)."""
        if span is not None and count is not None:
            if count <= 0:
                self.span = max(1, span * 4)  # an empty range: look four times further
            else:
                factor = self.page / count
                self.span = max(1, int(span * min(max(factor, 1 / 8), 8)))
            return
        if len(suffixes) >= 2:
            width = key_number(suffixes[-1]) - key_number(suffixes[0])
            self.span = max(1, width * self.page // (len(suffixes) - 1))

    def end_after(self, start: bytes, hard_end: bytes) -> tuple[bytes, int]:
        """The end (exclusive) of the next range from ``start`` (a full key), and its span in key numbers.

        Never beyond ``hard_end`` (the prefix's own end); always beyond ``start``.
        """
        if not self.span or not start.startswith(self.prefix):
            return hard_end, 0
        first = key_number(start[len(self.prefix):])
        last = first + self.span
        if last >= _MAX:
            return hard_end, 0
        end = self.prefix + number_key(last)
        if end <= start:
            end = start + b"\x00"
        return (end, self.span) if end < hard_end else (hard_end, 0)
