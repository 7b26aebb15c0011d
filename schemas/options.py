"""Per-session analysis options: optional start-session parameters, and the severity rule.

Every field is optional; ``None`` means the service's default (the analyzer's and aggregator's
settings, whose defaults are the constants below). A session's options are fixed at its start:
the API validates them, ``StartSession`` carries them to ingest (which copies them onto every
``ChunkRecord``, so analyzers stay stateless) and to the aggregator (which keeps them in the
session's header, where its tracker reads them).

Severity rule (``severity_for``): the query says what to look for, not how bad a sighting is, so
severity says how sure the system is: ``high`` at a confidence of ``severity_high`` or more,
``medium`` at ``severity_medium`` or more, else ``low``. A merged event keeps the highest severity
it reached.
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ZONE_NAME = re.compile(r"^[a-z][a-z0-9 ]{0,31}$")
MAX_ZONES = 16
Box = tuple[float, float, float, float]

DEFAULT_SEVERITY_HIGH = 0.8
DEFAULT_SEVERITY_MEDIUM = 0.6


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class AnalysisOptions(BaseModel):
    """What a session may tune; None everywhere is the services' defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    detection_threshold: float | None = Field(
        default=None,
        ge=0.05,
        le=0.99,
        description="Detector score an object needs in a frame to count as seen (analyzer default "
        "0.5; 0.6 for an empty query).",
    )
    min_frames: int | None = Field(
        default=None,
        ge=1,
        le=20,
        description="Sampled frames an object must be tracked in before it becomes an event "
        "(aggregator default 2: a single-frame detection is never an event).",
    )
    max_lost_s: float | None = Field(
        default=None,
        ge=0.0,
        le=60.0,
        description="How long a tracked object may go unseen and still be the same event (default 3 s).",
    )
    severity_high: float | None = Field(default=None, ge=0.0, le=1.0, description="Default 0.8.")
    severity_medium: float | None = Field(default=None, ge=0.0, le=1.0, description="Default 0.6.")
    zones: dict[str, Box] | None = Field(
        default=None,
        description="Named regions of the frame, as fractions of its width and height "
        "(x1, y1, x2, y2): {\"door\": [0.7, 0.2, 0.95, 0.9]}. A query's relation to a zone's name "
        '("a person near the door") is judged on the zone\'s box.',
    )

    @field_validator("zones")
    @classmethod
    def _zones(cls, zones: dict[str, Box] | None) -> dict[str, Box] | None:
        if zones is None:
            return None
        if len(zones) > MAX_ZONES:
            raise ValueError(f"at most {MAX_ZONES} zones")
        checked: dict[str, Box] = {}
        for raw_name, box in zones.items():
            # Queries are read as words: "loading-dock" is named "loading dock" in them.
            words = raw_name.lower().replace("-", " ").split()
            if len(words) > 1 and words[0] in ("the", "a", "an"):
                words = words[1:]  # "the door" is the zone "door", as queries name it
            name = " ".join(words)
            if not ZONE_NAME.match(name):
                raise ValueError(
                    f"zone name {raw_name!r}: 1-32 letters, digits, spaces or '-', starting with a letter"
                )
            if name in checked:
                raise ValueError(f"zone {name!r} is named twice")
            x1, y1, x2, y2 = box
            if not (0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0):
                raise ValueError(
                    f"zone {name!r}: a box is x1, y1, x2, y2 fractions of the frame with 0 <= x1 < x2 <= 1 "
                    f"and 0 <= y1 < y2 <= 1, got {list(box)}"
                )
            checked[name] = (float(x1), float(y1), float(x2), float(y2))
        return checked or None

    @model_validator(mode="after")
    def _severity_order(self) -> AnalysisOptions:
        high, medium = self.severity_thresholds
        if medium > high:
            raise ValueError(f"severity_medium ({medium}) must not exceed severity_high ({high})")
        return self

    @property
    def severity_thresholds(self) -> tuple[float, float]:
        """(high, medium): the session's own, else the defaults."""
        high = DEFAULT_SEVERITY_HIGH if self.severity_high is None else self.severity_high
        medium = DEFAULT_SEVERITY_MEDIUM if self.severity_medium is None else self.severity_medium
        return high, medium


def severity_for(confidence: float, options: AnalysisOptions | None = None) -> Severity:
    """The documented severity rule (module docstring), with the session's thresholds if it set them."""
    high, medium = (options or _DEFAULTS).severity_thresholds
    if confidence >= high:
        return Severity.HIGH
    if confidence >= medium:
        return Severity.MEDIUM
    return Severity.LOW


_DEFAULTS = AnalysisOptions()
