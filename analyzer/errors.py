"""Errors of the analyzer: model build and loading, inference, query understanding."""

from __future__ import annotations

from livestream.errors import ConfigurationError, LivestreamError


class AnalyzerError(LivestreamError):
    """Something went wrong while analysing a chunk."""


class FrameDecodeError(AnalyzerError):
    """A frame of a chunk record could not be decoded into an image."""


class DetectorError(AnalyzerError):
    """The detector was given input it cannot run on, or inference itself failed."""


class ModelNotFoundError(ConfigurationError):
    """The ONNX detector file is missing: it is built by ``make models``."""


class ModelBuildError(ConfigurationError):
    """Building the ONNX detector (download, conversion or verification) failed."""


class QueryError(LivestreamError):
    """A natural-language query names nothing the detector can find."""
