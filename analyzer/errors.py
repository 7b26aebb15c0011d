"""Errors of the analyzer: model build and loading, inference, query understanding."""

from __future__ import annotations

from typing import Any

from livestream.errors import ConfigurationError, LivestreamError


class AnalyzerError(LivestreamError):
    """Something went wrong while analysing a chunk."""


class FrameDecodeError(AnalyzerError):
    """A frame of a chunk record could not be decoded into an image."""


class DetectorError(AnalyzerError):
    """The detector was given input it cannot run on, or inference itself failed.

    ``retryable`` marks a failure of the runtime rather than of the input (onnxruntime's
    ``Fail`` / ``RuntimeException`` / ``EPFail``, e.g. a GPU out of memory): the same chunk may
    well succeed a moment later, so the service retries it with backoff before reporting the
    chunk failed (``AnalyzerService``). Everything else about a chunk is deterministic.
    """

    def __init__(self, message: str, *, retryable: bool = False, **context: Any) -> None:
        super().__init__(message, **context)
        self.retryable = retryable


class BrokerOutageError(AnalyzerError):
    """The broker stayed unreachable (produce, commit or fetch failing) past ``broker_outage_limit_s``."""


class ModelNotFoundError(ConfigurationError):
    """The ONNX detector file is missing: it is built by ``make models``."""


class ModelBuildError(ConfigurationError):
    """Building the ONNX detector (download, conversion or verification) failed."""


class QueryError(LivestreamError):
    """A natural-language query names nothing the detector can find."""
