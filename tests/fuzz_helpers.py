"""What the fuzzing tests share (hypothesis): the bounded, derandomized settings, tricky text and JSON values, and
a file written into a fresh folder."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
TRICKY = st.sampled_from(
    ["", " ", "\x00", "\ud800", "\udfff", "\u202e", "\ufeff", "\u2028", "\r\n", "\n", "\t", "😀", '"', ",", "\\"]
)
TEXT = st.one_of(
    st.text(max_size=12), st.text(max_size=12), TRICKY, st.lists(TRICKY | st.text(max_size=4), max_size=4).map("".join)
)
HUGE_TEXT = st.integers(100_000, 400_000).map(lambda n: "é" * n)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | TEXT | st.integers(10**20, 10**30)
JSON_VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3), max_leaves=8
)


@contextlib.contextmanager
def written(suffix: str, content: bytes):
    """A fresh folder holding `data{suffix}` with the content; yields the file's path."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"data{suffix}"
        path.write_bytes(content)
        yield path
