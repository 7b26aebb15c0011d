"""Pure tests of the session tracker (``aggregator.tracking``): identities, lifecycle, exact resumption."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trackers.utils.kalman_filter import KalmanFilter
from trackers.utils.motion_models import constant_velocity_transition_matrix

from aggregator.tracking import (
    Assignment,
    Detection,
    FrameObservation,
    FrameOrderError,
    TrackerSettings,
    TrackerState,
    expand_covariance,
    update,
)

SETTINGS = TrackerSettings()
STEP = 0.5  # seconds between sampled frames (~2 fps)


def det(label: str, x: float, y: float, w: float = 0.1, h: float = 0.3, score: float = 0.9) -> Detection:
    return Detection(label=label, score=score, box=(x, y, x + w, y + h))


def run(
    frames: list[FrameObservation], state: TrackerState | None = None, cfg: TrackerSettings = SETTINGS
) -> tuple[TrackerState, list[tuple[Assignment, ...]]]:
    state = state or TrackerState()
    out = []
    for frame in frames:
        state, assignments = update(state, frame, cfg)
        out.append(assignments)
    return state, out


def test_two_objects_crossing_keep_their_ids() -> None:
    # A walks right and B walks left, 0.08 of the frame per sampled frame; they overlap mid-way.
    rng = random.Random(7)
    frames, truth = [], []
    for k in range(12):
        a = det("person", 0.05 + 0.08 * k, 0.30)
        b = det("person", 0.85 - 0.08 * k, 0.36)
        pair = [("A", a), ("B", b)]
        rng.shuffle(pair)  # detection order must not carry identity
        truth.append([name for name, _ in pair])
        frames.append(FrameObservation(stream_time=k * STEP, detections=tuple(d for _, d in pair)))
    _, out = run(frames)
    ids: dict[str, set[int | None]] = {"A": set(), "B": set()}
    for names, assignments in zip(truth, out, strict=True):
        for name, assignment in zip(names, assignments, strict=True):
            ids[name].add(assignment.track_id)
    assert len(ids["A"]) == 1 and len(ids["B"]) == 1
    assert ids["A"] != ids["B"]
    assert all(a.confirmed for assignments in out[1:] for a in assignments)


def test_fast_motion_between_sampled_frames_keeps_the_id() -> None:
    # 0.25 of the frame per 0.5 s: 2.5 box widths, no overlap between consecutive boxes. The second
    # sighting matches by centre distance, later ones by overlap with the Kalman prediction.
    frames = [
        FrameObservation(stream_time=k * STEP, detections=(det("car", 0.02 + 0.25 * k, 0.5, h=0.1),))
        for k in range(4)
    ]
    _, out = run(frames)
    assert [assignments[0].track_id for assignments in out] == [1, 1, 1, 1]


def _leave_and_return(gap: float) -> tuple[int | None, int | None]:
    before = [FrameObservation(stream_time=k * STEP, detections=(det("car", 0.4, 0.4),)) for k in range(5)]
    state, out = run(before)
    t = before[-1].stream_time + gap
    # Empty frames keep arriving while the car is away (the stream goes on).
    empty = [FrameObservation(stream_time=s) for s in np.arange(2.5, t - 1e-9, STEP).tolist()]
    state, _ = run(empty, state)
    back = [FrameObservation(stream_time=t + k * STEP, detections=(det("car", 0.42, 0.4),)) for k in range(2)]
    _, out_back = run(back, state)
    return out[-1][0].track_id, out_back[0][0].track_id


def test_short_gap_keeps_the_id() -> None:
    first, again = _leave_and_return(gap=2.0)
    assert first == again == 1


def test_long_gap_gives_a_new_id() -> None:
    first, again = _leave_and_return(gap=SETTINGS.max_lost_seconds + 1.0)
    assert first == 1
    assert again == 2


def test_single_frame_false_detection_never_confirms() -> None:
    frames = [FrameObservation(stream_time=k * STEP, detections=(det("person", 0.1, 0.1),)) for k in range(4)]
    frames[2] = frames[2].model_copy(
        update={"detections": (*frames[2].detections, det("dog", 0.7, 0.6, score=0.95))}
    )
    state, out = run(frames)
    ghost = out[2][1]
    assert ghost.track_id == 2 and not ghost.confirmed
    # Dropped at its first miss: not kept, never confirmed, its id never reused.
    assert [t.track_id for t in state.tracks] == [1]
    assert state.next_track_id == 3


def test_two_instances_of_one_class_keep_distinct_ids() -> None:
    rng = random.Random(3)
    frames = []
    for k in range(10):
        jitter = [rng.uniform(-0.01, 0.01) for _ in range(4)]
        left = det("person", 0.30 + jitter[0], 0.30 + jitter[1])
        right = det("person", 0.42 + jitter[2], 0.30 + jitter[3])  # side by side, 0.02 apart
        frames.append(FrameObservation(stream_time=k * STEP, detections=(left, right)))
    state, out = run(frames)
    assert {tuple(a.track_id for a in assignments) for assignments in out} == {(1, 2)}
    assert sum(t.confirmed for t in state.tracks) == 2


def test_a_track_never_takes_another_label() -> None:
    frames = [FrameObservation(stream_time=k * STEP, detections=(det("person", 0.2, 0.2),)) for k in range(3)]
    frames.append(FrameObservation(stream_time=1.5, detections=(det("cat", 0.2, 0.2),)))
    state, out = run(frames)
    assert out[-1][0].track_id == 2
    assert {t.track_id: t.label for t in state.tracks} == {1: "person", 2: "cat"}


def test_frames_out_of_order_are_refused() -> None:
    state, _ = update(TrackerState(), FrameObservation(stream_time=1.0), SETTINGS)
    with pytest.raises(FrameOrderError) as caught:
        update(state, FrameObservation(stream_time=1.0), SETTINGS)
    assert caught.value.context == {"stream_time": 1.0, "last_time": 1.0}


def test_weak_detections_extend_tracks_but_start_none() -> None:
    weak = SETTINGS.new_track_min_score / 2
    frames = [
        FrameObservation(
            stream_time=0.0, detections=(det("person", 0.2, 0.2), det("cup", 0.7, 0.7, score=weak))
        ),
        FrameObservation(stream_time=0.5, detections=(det("person", 0.21, 0.2, score=weak),)),
    ]
    _, out = run(frames)
    assert out[0][1].track_id is None
    assert out[1][0] == Assignment(detection_index=0, track_id=1, confirmed=True)


def test_stored_covariance_block_is_the_library_filters_posterior() -> None:
    # The state keeps one 2x2 block; the library's full 8x8 filter run alongside must agree.
    rng = random.Random(11)
    cfg = SETTINGS
    x, y, t = 0.2, 0.3, 0.0
    state, _ = update(TrackerState(), FrameObservation(stream_time=t, detections=(det("car", x, y),)), cfg)
    kf = KalmanFilter(dim_x=8, dim_z=4)
    kf.state = np.array([x, y, x + 0.1, y + 0.3, 0, 0, 0, 0], dtype=np.float64).reshape((8, 1))
    kf.state_covariance = expand_covariance(state.tracks[0].covariance)
    kf.observation_mtx = np.eye(4, 8)
    kf.measurement_noise = np.eye(4) * cfg.measurement_std**2
    idx = np.arange(4, dtype=np.int64)
    for _ in range(40):
        dt = rng.choice([0.5, 0.5, 1.0, 1.5])
        t += dt
        x, y = x + rng.uniform(-0.03, 0.05), y + rng.uniform(-0.03, 0.03)
        box = det("car", x, y)
        state, out = update(state, FrameObservation(stream_time=t, detections=(box,)), cfg)
        assert out[0].track_id == 1
        q = cfg.acceleration_std**2
        kf.transition_mtx = constant_velocity_transition_matrix(8, idx, idx + 4, dt)
        kf.process_noise = expand_covariance((q * dt**4 / 4, q * dt**3 / 2, q * dt**2))
        kf.predict()
        kf.update(np.array(box.box))
        track = state.tracks[0]
        np.testing.assert_allclose(
            expand_covariance(track.covariance), kf.state_covariance, rtol=1e-9, atol=1e-15
        )
        np.testing.assert_allclose(np.array(track.mean), kf.state[:, 0], rtol=1e-9, atol=1e-12)


# Boxes on a coarse grid, so that random detections overlap and tracks match, miss and return.
_detections = st.builds(
    lambda label, score, gx, gy, gw, gh: Detection(
        label=label, score=score, box=(gx * 0.1, gy * 0.1, gx * 0.1 + gw * 0.05, gy * 0.1 + gh * 0.05)
    ),
    st.sampled_from(["person", "car"]),
    st.floats(0.0, 1.0),
    st.integers(0, 7),
    st.integers(0, 7),
    st.integers(1, 4),
    st.integers(1, 4),
)
_frames = st.lists(
    st.tuples(st.sampled_from([0.5, 0.5, 0.5, 1.0, 2.5, 4.0]), st.lists(_detections, max_size=6)),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(sequence=_frames, cut=st.integers(0, 25), max_tracks=st.integers(1, 6), min_hits=st.integers(1, 3))
def test_resuming_from_json_equals_never_serialising(
    sequence: list[tuple[float, list[Detection]]], cut: int, max_tracks: int, min_hits: int
) -> None:
    cfg = TrackerSettings(max_tracks=max_tracks, min_hits=min_hits)
    frames, t = [], 0.0
    for dt, detections in sequence:
        frames.append(FrameObservation(stream_time=t, detections=tuple(detections)))
        t += dt
    straight, straight_out = run(frames, cfg=cfg)

    # Through JSON after every frame, as the changelog-backed table stores it.
    state, json_out = TrackerState(), []
    for frame in frames:
        state, assignments = update(state, frame, cfg)
        json_out.append(assignments)
        text = state.model_dump_json()
        state = TrackerState.model_validate_json(text)
        assert state.model_dump_json() == text
    assert json_out == straight_out
    assert state == straight

    # A re-fold from a stored state in the middle reproduces the same tail.
    cut = min(cut, len(frames))
    head, _ = run(frames[:cut], cfg=cfg)
    tail, tail_out = run(frames[cut:], TrackerState.model_validate_json(head.model_dump_json()), cfg)
    assert tail == straight and tail_out == straight_out[cut:]
    assert len(straight.tracks) <= max_tracks
    assert [t.track_id for t in straight.tracks] == sorted({t.track_id for t in straight.tracks})


def test_state_stays_bounded_over_a_long_busy_run() -> None:
    # 2 hours at 2 fps would be 14,400 frames; 3,000 busy ones show the plateau.
    rng = random.Random(5)
    labels = ["person", "car", "dog", "cup"]
    objects = [[rng.choice(labels), rng.uniform(0, 0.8), rng.uniform(0, 0.6)] for _ in range(40)]
    state, largest, detections_total = TrackerState(), 0, 0
    started = time.perf_counter()
    frames = 3000
    for k in range(frames):
        dets = []
        for obj in objects:
            obj[1] = min(max(obj[1] + rng.uniform(-0.03, 0.03), 0.0), 0.85)
            obj[2] = min(max(obj[2] + rng.uniform(-0.02, 0.02), 0.0), 0.65)
            if rng.random() < 0.5:  # half the objects visible at a time, with false detections
                dets.append(det(obj[0], obj[1], obj[2], score=rng.uniform(0.2, 1.0)))
        if rng.random() < 0.3:
            dets.append(det(rng.choice(labels), rng.uniform(0, 0.8), rng.uniform(0, 0.6)))
        detections_total += len(dets)
        state, _ = update(state, FrameObservation(stream_time=k * STEP, detections=tuple(dets)), SETTINGS)
        largest = max(largest, len(state.model_dump_json()))
    elapsed = time.perf_counter() - started
    per_frame_ms = elapsed / frames * 1000
    print(
        f"\ntracker: {frames} frames, {detections_total / frames:.1f} detections/frame, "
        f"{per_frame_ms:.2f} ms/frame, largest state {largest} bytes of JSON "
        f"({len(state.tracks)} tracks now, cap {SETTINGS.max_tracks}), next id {state.next_track_id}"
    )
    assert len(state.tracks) <= SETTINGS.max_tracks
    assert largest <= SETTINGS.max_tracks * 450 + 64


def test_a_weak_detection_continues_a_confirmed_track_but_starts_and_confirms_nothing() -> None:
    strong = [FrameObservation(stream_time=k * STEP, detections=(det("person", 0.2, 0.3),)) for k in range(2)]
    state, out = run(strong)
    assert out[-1][0].confirmed
    track_id = out[-1][0].track_id
    weak = Detection(label="person", score=0.4, box=(0.2, 0.3, 0.3, 0.6), weak=True)
    state, [assignment] = update(state, FrameObservation(stream_time=1.0, detections=(weak,)), SETTINGS)
    assert assignment.track_id == track_id and assignment.confirmed

    # Alone, weak detections start no track...
    _, out = run([FrameObservation(stream_time=k * STEP, detections=(weak,)) for k in range(4)])
    assert all(a.track_id is None for frame in out for a in frame)
    # ...and do not confirm a tentative one.
    tentative, [born] = update(
        TrackerState(), FrameObservation(stream_time=0.0, detections=(det("person", 0.2, 0.3),)), SETTINGS
    )
    assert born.track_id is not None and not born.confirmed
    _, [after] = update(tentative, FrameObservation(stream_time=0.5, detections=(weak,)), SETTINGS)
    assert after.track_id is None
