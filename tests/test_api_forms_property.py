"""Property-based tests of the API's forms: any input is a clear 422 or accepted, never a 500.

No Kafka here: an accepted start answers 503 (the Kafka clients never start), which is what
shows the form passed validation. The egress policy is unrestricted (private sources allowed),
so checking a source only parses it and no name is ever resolved: nothing leaves this process.
"""

from __future__ import annotations

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from api.app import create_app
from api.settings import ApiSettings
from schemas.api import EndSessionForm, StartSessionForm

KEY = "property-test-key-0123456789"

form_text = st.text(max_size=300) | st.sampled_from(
    ["", " ", "http://", "https://cam.test/live.m3u8", "ftp://x/y", "http://[::1", "http://a@b@c/", "\x00"]
)
urls = st.builds(
    lambda scheme, rest: scheme + rest, st.sampled_from(["http://", "https://", "", "rtsp://"]), form_text
)


@settings(max_examples=200, deadline=None)
@given(
    source_url=urls | form_text, name=form_text, query=st.none() | form_text, stream_id=st.none() | form_text
)
def test_start_session_form_validates_or_raises_a_validation_error(
    source_url: str, name: str, query: str | None, stream_id: str | None
) -> None:
    try:
        form = StartSessionForm(
            source_url=source_url, name=name, rapid_review_query=query, stream_id=stream_id
        )
    except ValidationError as exc:
        assert all(error["msg"] for error in exc.errors())
        return
    assert form.source_url.startswith(("http://", "https://")) and form.name.strip()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source_url=urls | form_text, name=form_text, query=st.none() | form_text)
def test_start_session_answers_422_or_reaches_kafka_never_500(
    source_url: str, name: str, query: str | None
) -> None:
    client = TestClient(
        create_app(ApiSettings(keys=KEY, allow_private_sources=True, rate_limit_per_second=0))
    )
    data = {"source_url": source_url, "name": name}
    if query is not None:
        data["rapid_review_query"] = query
    response = client.post("/api/live/start-session", headers={"X-API-Key": KEY}, data=data)
    assert response.status_code in (422, 503), (response.status_code, response.text)
    detail = response.json()["detail"]
    assert detail, "a refusal always says why"


@settings(max_examples=100, deadline=None)
@given(stream_id=form_text, session_id=form_text)
def test_end_session_form_validates_or_raises_a_validation_error(stream_id: str, session_id: str) -> None:
    try:
        EndSessionForm(stream_id=stream_id, session_id=session_id)
    except ValidationError as exc:
        assert exc.errors()
