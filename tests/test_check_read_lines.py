"""``fsm-protocol check`` reads a trace a chunk at a time, yet sees the lines readline() would."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from fsm_protocol._check._checker import _line_batches, read_lines


def _by_readline(stream: io.BytesIO, max_line_bytes: int) -> Iterator[bytes]:
    """The reference: one readline() per line, a too-long line cut at the limit + 1 byte."""
    limit = max_line_bytes + 1
    while raw := stream.readline(limit):
        yield raw
        if len(raw) == limit and not raw.endswith(b"\n"):
            return


_PIECES = st.sampled_from([b"\n", b"\r", b"\r\n", b"ab", b"x" * 7, b"{}", b""])


@settings(max_examples=500)
@given(
    data=st.binary(max_size=200) | st.lists(_PIECES, max_size=40).map(b"".join),
    max_line_bytes=st.integers(0, 12),
    chunk=st.integers(1, 20),
)
def test_chunked_reading_gives_the_lines_readline_gives(
    data: bytes, max_line_bytes: int, chunk: int
) -> None:
    batches = _line_batches(io.BytesIO(data), max_line_bytes + 1, chunk)
    got = list(itertools.chain.from_iterable(batches))
    assert got == list(_by_readline(io.BytesIO(data), max_line_bytes))


def test_lines_across_chunk_boundaries_and_a_final_line_without_newline() -> None:
    lines = [b"x" * n + b"\n" for n in (1, 300_000, 5, 700_000)] + [b"last"]
    data = b"".join(lines)
    assert list(read_lines(io.BytesIO(data), 1_000_000)) == lines
    assert list(read_lines(io.BytesIO(data), 400_000)) == lines[:3] + [b"x" * 400_001]
