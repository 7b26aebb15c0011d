"""Multi-object tracking over a session's sampled frames as a pure fold: ``update(state, frame)``.

Why a fold. Tracking runs in the aggregator, which folds each session's chunk results in chunk
order into a changelog-backed table. The tracker's state is therefore an explicit, frozen,
JSON-serialisable value (``TrackerState``) that travels with the session, not an object living in
one replica: a redelivered or re-folded chunk, folded from the same stored state, reproduces the
same tracks and ids. ``update`` has no clock, no randomness and no hidden state; resuming from a
state that went through JSON gives results identical to never serialising (Python floats, and
pydantic's JSON encoding of them, round-trip exactly).

Library. Roboflow's ``trackers`` (SORT, ByteTrack, OC-SORT...) is the maintained tracking library
that runs on numpy 2 (``norfair`` pins numpy<2; ``supervision`` >= 0.27 moved its ByteTrack out to
``trackers``). Its tracker objects cannot be restored faithfully from explicit values: tracklets
number themselves from a counter inside the tracker object, keep frame counters and a process
noise calibration cache in the motion model, and ``KalmanFilter.get_state`` returns the last
gap-scaled Q rather than the model. So this module keeps the SORT/ByteTrack scheme and the
library's building blocks, and owns only the state: the library's ``KalmanFilter`` (predict and
Joseph-form update), its constant-velocity transition matrix and its ``IoU``, with scipy's
``linear_sum_assignment`` (the Hungarian matcher ``trackers`` itself uses) for association.
Importing them imports the whole ``trackers`` package (about 1.5 s, once), whose ``opencv-python``
needs the system's ``libGL.so.1`` and ``libglib-2.0`` (``libgl1``, ``libglib2.0-0`` on Debian).

Rules (all in stream time, seconds; boxes normalised to the frame, ``x1 < x2``, ``y1 < y2``):

* Frames are folded in strictly increasing ``stream_time``; an earlier or equal time raises
  ``FrameOrderError`` (a re-fold must start again from the state stored before that frame).
* Motion model: constant velocity on the four box corners ``[x1, y1, x2, y2, vx1, vy1, vx2, vy2]``
  (the library's XYXY layout), velocities in frame widths per second. A track's mean and
  covariance are the posterior at its last matched frame (``last_seen``); each frame predicts
  every track in one step over ``dt = stream_time - last_seen`` with white-noise acceleration
  ``acceleration_std``, so a lost track's stored state does not change while it is lost, and the
  prediction's uncertainty grows with the gap.
* Large motion between sampled frames (0.5 s apart at ~2 fps): a detection is compared with the
  Kalman *prediction*, not with the last box. The cost is ``1 - IoU`` when the IoU reaches
  ``min_iou``. Otherwise the pair is still allowed when the centres are within a gate radius
  ``r``, at a cost ``1 + d / r`` that loses to any overlapping pair; ``r`` is the larger of
  ``max_centre_distance`` mean box diagonals and the prediction's own 99% gate (chi-square, 2
  degrees of freedom, on the centre's predicted variance plus the measurement noise), the latter
  capped at ``max_gate_distance`` frame widths. The prediction's gate is what lets a track's
  second sighting match although its speed is still unknown (a new track's speed prior is
  ``initial_velocity_std``); the cap keeps a long-lost track from claiming detections anywhere.
  Other pairs cannot match. The Hungarian solution of that cost matrix is the assignment.
* Per class: a track has one label; only detections of that label are compared with it
  (labels are matched one after the other, in sorted order).
* Birth: an unmatched detection with ``score >= new_track_min_score`` starts a track with the
  next id from ``TrackerState.next_track_id`` (ids count from 1 and are never reused), in the
  order highest score first, then detection index. Weaker unmatched detections get no track.
* Confirmation: a track is confirmed once it has been matched in ``min_hits`` frames (counting
  its first); confirmation is permanent. A tentative track that is not matched for longer than
  ``tentative_max_lost_seconds`` (default 0: at its first miss) is dropped, so a single-frame
  false detection never confirms when ``min_hits >= 2``.
* Loss: a confirmed track that is not matched is *lost*; it may still be matched again (same
  id) until ``stream_time - last_seen > max_lost_seconds``, when it is dropped. An object that
  returns after that gets a new id.
* Bound: at most ``max_tracks`` tracks are kept. A new track that would exceed it evicts the
  track lost longest (smallest ``last_seen``; ties by id) among those not matched in this
  frame; if every kept track was matched in this frame, the detection gets no track.
* Hysteresis: a ``weak`` detection is compared with confirmed tracks only and never starts a
  track, so a score hovering just below the threshold keeps an object seen but cannot make one.
* Output: one ``Assignment`` per detection, in detection order: its ``track_id`` (``None`` when
  it neither matched nor started a track) and whether that track is confirmed now.

State size. Per track: 8 floats of mean, 3 of covariance and a few scalars (about 400 bytes of
JSON), so ``max_tracks`` bounds the state (16 tracks: about 7 KB). The covariance is stored as
one 2x2 block (position variance, position-velocity covariance, velocity variance) because the
filter is exactly block-diagonal with four identical blocks: the four coordinates share F, Q, R
and the initial covariance and are updated together, so the library's 8x8 algebra never mixes
them (the tests check the expansion equals the library's own posterior).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.optimize import linear_sum_assignment
from trackers.utils.iou import IoU
from trackers.utils.kalman_filter import KalmanFilter
from trackers.utils.motion_models import constant_velocity_transition_matrix

from aggregator.errors import AggregatorError
from schemas.tracking import Box, CovarianceBlock, Track, TrackerState

_DIM_X = 8
_DIM_Z = 4
_POS_IDX = np.array([0, 1, 2, 3], dtype=np.int64)
_VEL_IDX = np.array([4, 5, 6, 7], dtype=np.int64)
_INFEASIBLE = 1e6  # cost of a forbidden pair; anything at or above it is never kept
_IOU = IoU()
# 99% quantile of the chi-square distribution with 2 degrees of freedom (a centre's x and y).
_CHI2_2DOF_99 = 9.2103


class TrackingError(AggregatorError):
    """Root of the tracker's errors."""


class FrameOrderError(TrackingError):
    """A frame was folded at or before the stream time of the state's last frame."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TrackerSettings(_Frozen):
    """Thresholds of ``update``; the defaults suit ~2 fps sampled frames of a fixed camera."""

    min_iou: float = Field(0.1, ge=0.0, le=1.0)
    max_centre_distance: float = Field(1.0, gt=0.0)  # in mean box diagonals
    max_gate_distance: float = Field(0.3, ge=0.0)  # cap of the prediction's gate, in frame widths
    new_track_min_score: float = Field(0.3, ge=0.0, le=1.0)
    min_hits: int = Field(2, ge=1)
    max_lost_seconds: float = Field(3.0, ge=0.0)
    # A detector flickers on real footage: a new object seen in every other frame should confirm.
    tentative_max_lost_seconds: float = Field(0.0, ge=0.0)
    max_tracks: int = Field(16, ge=1)
    # Detector box jitter, in frame widths (standard deviation of each corner).
    measurement_std: float = Field(0.02, gt=0.0)
    # How fast a velocity may change (frame widths / s^2); people and cars in a fixed view.
    acceleration_std: float = Field(0.5, gt=0.0)
    # Prior on a new track's speed (frame widths / s): a new object may move in any direction.
    initial_velocity_std: float = Field(0.5, gt=0.0)


class Detection(_Frozen):
    """One detector output on one frame."""

    label: str = Field(min_length=1)
    score: float = Field(ge=0.0, le=1.0)
    box: Box  # normalised x1, y1, x2, y2
    # A weak detection (below the caller's detection threshold) may only continue a confirmed
    # track: it neither starts a track nor matches a tentative one (hysteresis).
    weak: bool = False

    @model_validator(mode="after")
    def _box_is_well_formed(self) -> Detection:
        x1, y1, x2, y2 = self.box
        if not all(math.isfinite(v) for v in self.box) or not (x1 < x2 and y1 < y2):
            raise ValueError(f"box must be finite with x1 < x2 and y1 < y2, got {self.box}")
        return self


class FrameObservation(_Frozen):
    """The detections of one sampled frame at ``stream_time`` seconds."""

    stream_time: float = Field(ge=0.0, allow_inf_nan=False)
    detections: tuple[Detection, ...] = ()


class Assignment(_Frozen):
    """What became of detection ``detection_index`` of the frame."""

    detection_index: int = Field(ge=0)
    track_id: int | None
    confirmed: bool


def update(
    state: TrackerState, frame: FrameObservation, settings: TrackerSettings
) -> tuple[TrackerState, tuple[Assignment, ...]]:
    """Fold one frame into the tracker state; returns the new state and one assignment per detection."""
    now = frame.stream_time
    if state.last_time is not None and now <= state.last_time:
        raise FrameOrderError(
            "frames must be folded in increasing stream time", stream_time=now, last_time=state.last_time
        )

    # Lost tracks past their budget are gone before matching, so they cannot take a detection.
    kept = [t for t in state.tracks if now - t.last_seen <= settings.max_lost_seconds]
    detections = frame.detections
    track_for: dict[int, int] = {}  # detection index -> track id
    updated: dict[int, Track] = {}  # track id -> track matched in this frame

    for label in sorted({d.label for d in detections}):
        det_idx = [i for i, d in enumerate(detections) if d.label == label]
        tracks = [t for t in kept if t.label == label]
        if not tracks:
            continue
        filters = [_predicted_filter(t, now, settings) for t in tracks]
        predicted = np.array([_well_formed(kf.state[:_DIM_Z, 0]) for kf in filters])
        # Every corner has the same predicted variance (one shared block); a centre averages two
        # independent corners, and a detection's centre adds half the measurement variance.
        centre_var = np.array(
            [(kf.state_covariance[0, 0] + settings.measurement_std**2) / 2.0 for kf in filters]
        )
        observed = np.array([detections[i].box for i in det_idx], dtype=np.float64)
        cost = _cost_matrix(predicted, centre_var, observed, settings)
        for c, i in enumerate(det_idx):
            if detections[i].weak:
                for r, track in enumerate(tracks):
                    if not track.confirmed:
                        cost[r, c] = _INFEASIBLE
        rows, cols = linear_sum_assignment(cost)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            if cost[r, c] >= _INFEASIBLE:
                continue
            detection = detections[det_idx[c]]
            updated[tracks[r].track_id] = _matched(tracks[r], filters[r], detection, now, settings)
            track_for[det_idx[c]] = tracks[r].track_id

    # Unmatched tentative tracks die after a short grace; confirmed ones stay, lost, for a while.
    survivors = [
        updated.get(t.track_id, t)
        for t in kept
        if t.track_id in updated or t.confirmed or now - t.last_seen <= settings.tentative_max_lost_seconds
    ]

    next_id = state.next_track_id
    unmatched = [i for i in range(len(detections)) if i not in track_for]
    for i in sorted(unmatched, key=lambda i: (-detections[i].score, i)):
        detection = detections[i]
        if detection.weak or detection.score < settings.new_track_min_score:
            continue
        if len(survivors) >= settings.max_tracks:
            lost = [t for t in survivors if t.track_id not in updated]
            if not lost:
                continue
            evicted = min(lost, key=lambda t: (t.last_seen, t.track_id))
            survivors = [t for t in survivors if t.track_id != evicted.track_id]
        track = _born(next_id, detection, now, settings)
        next_id += 1
        survivors.append(track)
        updated[track.track_id] = track
        track_for[i] = track.track_id

    new_state = TrackerState(
        next_track_id=next_id,
        last_time=now,
        tracks=tuple(sorted(survivors, key=lambda t: t.track_id)),
    )
    assignments = tuple(
        Assignment(
            detection_index=i,
            track_id=track_for.get(i),
            confirmed=i in track_for and updated[track_for[i]].confirmed,
        )
        for i in range(len(detections))
    )
    return new_state, assignments


def expand_covariance(block: CovarianceBlock) -> np.ndarray:
    """The 8x8 covariance of the XYXY constant-velocity state from its shared 2x2 block."""
    var_p, cov_pv, var_v = block
    eye = np.eye(_DIM_Z, dtype=np.float64)
    return np.block([[var_p * eye, cov_pv * eye], [cov_pv * eye, var_v * eye]])


def _block_of(covariance: np.ndarray) -> CovarianceBlock:
    # Corner x1's block stands for all four (see the module docstring on why they are equal).
    return (float(covariance[0, 0]), float(covariance[0, 4]), float(covariance[4, 4]))


def _filter(mean: Sequence[float], block: CovarianceBlock, settings: TrackerSettings) -> KalmanFilter:
    """The library's filter rebuilt from explicit values (``H`` selects the four corners)."""
    kf = KalmanFilter(dim_x=_DIM_X, dim_z=_DIM_Z)
    kf.state = np.asarray(mean, dtype=np.float64).reshape((_DIM_X, 1))
    kf.state_covariance = expand_covariance(block)
    kf.observation_mtx = np.eye(_DIM_Z, _DIM_X, dtype=np.float64)
    kf.measurement_noise = np.eye(_DIM_Z, dtype=np.float64) * settings.measurement_std**2
    return kf


def _predicted_filter(track: Track, now: float, settings: TrackerSettings) -> KalmanFilter:
    """The track's filter predicted from ``last_seen`` to ``now`` in one step."""
    dt = now - track.last_seen
    kf = _filter(track.mean, track.covariance, settings)
    kf.transition_mtx = constant_velocity_transition_matrix(_DIM_X, _POS_IDX, _VEL_IDX, dt)
    # Discrete white-noise acceleration over dt, per corner: q * [[dt^4/4, dt^3/2], [dt^3/2, dt^2]].
    q = settings.acceleration_std**2
    kf.process_noise = expand_covariance((q * dt**4 / 4.0, q * dt**3 / 2.0, q * dt**2))
    kf.predict()
    return kf


def _matched(
    track: Track, kf: KalmanFilter, detection: Detection, now: float, settings: TrackerSettings
) -> Track:
    kf.update(np.asarray(detection.box, dtype=np.float64))
    hits = track.hits + 1
    return track.model_copy(
        update={
            "mean": tuple(float(v) for v in kf.state[:, 0]),
            "covariance": _block_of(kf.state_covariance),
            "last_seen": now,
            "hits": hits,
            "confirmed": track.confirmed or hits >= settings.min_hits,
            "score": detection.score,
        }
    )


def _born(track_id: int, detection: Detection, now: float, settings: TrackerSettings) -> Track:
    return Track(
        track_id=track_id,
        label=detection.label,
        mean=(*detection.box, 0.0, 0.0, 0.0, 0.0),
        covariance=(settings.measurement_std**2, 0.0, settings.initial_velocity_std**2),
        first_seen=now,
        last_seen=now,
        hits=1,
        confirmed=settings.min_hits <= 1,
        score=detection.score,
    )


def _well_formed(box: np.ndarray) -> np.ndarray:
    # A prediction can cross its corners (opposite corner velocities); IoU needs x1 <= x2, y1 <= y2.
    x1, y1, x2, y2 = box
    return np.array([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)], dtype=np.float64)


def _cost_matrix(
    predicted: np.ndarray, centre_var: np.ndarray, observed: np.ndarray, settings: TrackerSettings
) -> np.ndarray:
    """Tracks x detections: ``1 - IoU`` for overlapping pairs, ``1 + d / r`` for pairs within the gate."""
    iou = _IOU.compute(predicted, observed).astype(np.float64)
    centre_p = (predicted[:, :2] + predicted[:, 2:]) / 2.0
    centre_o = (observed[:, :2] + observed[:, 2:]) / 2.0
    diag_p = np.hypot(predicted[:, 2] - predicted[:, 0], predicted[:, 3] - predicted[:, 1])
    diag_o = np.hypot(observed[:, 2] - observed[:, 0], observed[:, 3] - observed[:, 1])
    distance = np.linalg.norm(centre_p[:, None, :] - centre_o[None, :, :], axis=2)
    by_size = settings.max_centre_distance * (diag_p[:, None] + diag_o[None, :]) / 2.0
    by_prediction = np.minimum(np.sqrt(_CHI2_2DOF_99 * centre_var), settings.max_gate_distance)
    radius = np.maximum(np.maximum(by_size, by_prediction[:, None]), 1e-9)
    relative = distance / radius
    cost = np.full(iou.shape, _INFEASIBLE)
    near = relative <= 1.0
    cost[near] = 1.0 + relative[near]
    overlapping = iou >= max(settings.min_iou, 1e-12)
    cost[overlapping] = 1.0 - iou[overlapping]
    return cost
