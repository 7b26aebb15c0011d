"""Errors of the live HLS test source."""

from __future__ import annotations

from livestream.errors import LivestreamError


class TestSourceError(LivestreamError):
    """The test source cannot render, encode or serve its scripted stream."""

    __test__ = False  # not a pytest test class, despite the name


class ScriptError(TestSourceError):
    """A script (or its YAML/JSON description) is invalid: bad label, duration or media reference."""
