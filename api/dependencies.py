"""Request dependencies shared by the API's routers (``api.app``, ``api.playback``).

They live in their own module so that every router can use them without importing ``api.app``
(which imports the routers).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from api.auth import CREDENTIAL_QUERY_PARAMS, Authenticator
from api.errors import AuthenticationFailed, ServiceNotReady
from api.kafka_io import KafkaRuntime
from api.tenants import Caller


def authenticated_caller(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    x_api_key: Annotated[str | None, Header()] = None,
) -> Caller:
    """The caller of a header-authenticated route, after its rate limit.

    ``AuthenticationFailed`` (401) without a configured key, or with credentials in the query
    string (they belong to the SSE routes only); ``RateLimited`` (429) beyond the key's rate.
    """
    in_query = [name for name in CREDENTIAL_QUERY_PARAMS if name in request.query_params]
    if in_query:
        raise AuthenticationFailed(
            f"?{in_query[0]}= is accepted only by the SSE routes (.../events/stream): send the key as "
            "'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
        )
    authenticator: Authenticator = request.app.state.authenticator
    caller = authenticator.from_headers(authorization=authorization, x_api_key=x_api_key)
    request.app.state.rate_limiter.check(caller.key_id)
    return caller


HeaderCaller = Annotated[Caller, Depends(authenticated_caller)]


def kafka_runtime(request: Request, *, need_view: bool = True) -> KafkaRuntime:
    """The running Kafka clients; ``ServiceNotReady`` (503) while starting or catching up.

    Called in handler bodies (not as a dependency) so auth and form validation answer first.
    """
    runtime: KafkaRuntime | None = getattr(request.app.state, "runtime", None)
    if runtime is None or not runtime.started:
        raise ServiceNotReady("Kafka clients are not started")
    if runtime.failure is not None:
        raise ServiceNotReady("the session topics reader has failed", error=repr(runtime.failure))
    if need_view and not runtime.caught_up:
        raise ServiceNotReady("the session view is still catching up with the session topics")
    return runtime
