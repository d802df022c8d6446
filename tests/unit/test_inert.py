"""Receiver text made inert: control characters and bidi overrides replaced, length bounded, UTF-8 errors
replaced; ordinary text (tabs, newlines, any script) kept as it is."""

from __future__ import annotations

import pytest

from dispatcher.inert import excerpt, inert


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("ok", "ok"),
        ("line one\n\tline two", "line one\n\tline two"),
        ("\x1b[2J\x1b[31mred", "\ufffd[2J\ufffd[31mred"),  # terminal escapes lose their ESC
        ("a\x00b\rc\x7fd\x85e\x9bf", "a\ufffdb\ufffdc\ufffdd\ufffde\ufffdf"),  # NUL, CR, DEL, C1 NEL and CSI
        ("invoice_\u202egpj.exe", "invoice_\ufffdgpj.exe"),  # right-to-left override
        ("\u2066isolate\u2069 \u200emark\u200f \u061c", "\ufffdisolate\ufffd \ufffdmark\ufffd \ufffd"),
        ("Grüße, 你好, مرحبا", "Grüße, 你好, مرحبا"),
    ],
)
def test_inert_text(text: str, shown: str) -> None:
    """Exactly the unsafe characters become U+FFFD."""
    assert inert(text) == shown


def test_inert_bounds_the_length() -> None:
    """At most `limit` characters are kept."""
    assert inert("x" * 5000) == "x" * 4096
    assert inert("abcdef", 3) == "abc"


def test_excerpt_decodes_4_kib_with_replacement() -> None:
    """The body's first 4 KiB, decoded (a character cut at the edge or invalid bytes become U+FFFD), inert."""
    assert excerpt(b"\xff\xfeok\x1b") == "\ufffd\ufffdok\ufffd"
    assert excerpt(b"a" * 4095 + "é".encode()) == "a" * 4095 + "\ufffd"
    assert excerpt(b"b" * 10_000) == "b" * 4096
