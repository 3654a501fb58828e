"""Request ids and one log line per web request (Flask hooks; apart from `logs` so that the
worker, which logs without Flask, does not import it)."""

from __future__ import annotations

import logging
import time
import uuid
from types import MappingProxyType

from flask import Flask, Response, g, request

from service import logs
from service.config import Settings

log = logging.getLogger(logs.__name__)  # request lines keep the source they always had


def _start_request() -> None:
    given = request.headers.get(logs.REQUEST_ID_HEADER, "")
    g.request_id = given if logs.REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    g.request_started = time.perf_counter()
    g.request_log_token = logs._context.set({**logs._context.get(), "request_id": g.request_id})


def _finish_request(response: Response) -> Response:
    request_id = g.get("request_id")
    if request_id is None:
        return response
    response.headers[logs.REQUEST_ID_HEADER] = request_id
    # The endpoint name, not the path: paths carry unsubscribe tokens.
    level = logging.DEBUG if request.blueprint == "ops" else logging.INFO
    log.log(level, "request %s %s %d %.1f ms", request.method, request.endpoint or "-",
            response.status_code, (time.perf_counter() - g.request_started) * 1000)
    return response


def _end_request(_exc: BaseException | None) -> None:
    token = g.pop("request_log_token", None)
    if token is not None:
        try:
            logs._context.reset(token)
        except ValueError:  # torn down from another context (a preserved test-client context)
            logs._context.set(MappingProxyType({}))


def init_app(app: Flask, settings: Settings) -> None:
    if not app.testing:
        logs.configure_logging(settings)
    app.before_request(_start_request)
    app.after_request(_finish_request)
    app.teardown_request(_end_request)
