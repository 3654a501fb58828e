"""Problem documents (RFC 9457 `application/problem+json`): the one error shape of api and webhook."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from flask import Blueprint, Response, json, request
from werkzeug.exceptions import HTTPException

from service.errors import CommuniqueError, Conflict, FieldError, NotFound, ValidationError, WebhookRejected

PROBLEM_MIMETYPE = "application/problem+json"


class RequestRejected(CommuniqueError):
    """The HTTP request itself is unacceptable (wrong content type, too large, unauthenticated)."""

    def __init__(self, message: str, status: int, field: str | None = None):
        self.status = status
        self.field = field
        super().__init__(message)


def problem(status: int, detail: str | None = None, *, errors: list[FieldError] | None = None,
            headers: dict[str, str] | None = None) -> Response:
    """A problem response; `errors` always lists at least one {field?, reason} (house style)."""
    title = HTTPStatus(status).phrase
    reasons = errors or [FieldError(None, detail or title)]
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail or "; ".join(_describe(e) for e in reasons),
        "errors": [{k: v for k, v in e.as_dict().items() if k in ("field", "reason", "row")}
                   for e in reasons],
    }
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_MIMETYPE)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def problem_from_error(exc: CommuniqueError) -> Response:
    """Translate a domain error into its problem document (400/404/409, webhook statuses)."""
    if isinstance(exc, ValidationError):
        return problem(400, "the request is not valid", errors=exc.errors)
    if isinstance(exc, NotFound):
        return problem(404, str(exc) or "not found")
    if isinstance(exc, Conflict):
        return problem(409, str(exc))
    if isinstance(exc, WebhookRejected | RequestRejected):
        errors = [FieldError(exc.field, str(exc))] if exc.field else None
        return problem(exc.status, str(exc), errors=errors)
    return problem(400, str(exc))


def _describe(error: FieldError) -> str:
    return f"{error.field}: {error.reason}" if error.field else error.reason


def answer_errors_as_problems(bp: Blueprint) -> None:
    """One translation of errors for a JSON blueprint: our errors and HTTP errors become problem
    documents, and the request's session is rolled back so nothing half-written is committed."""
    from service.http.context import db_session

    @bp.errorhandler(CommuniqueError)
    def _domain_error(exc: CommuniqueError) -> Response:
        db_session().rollback()
        return problem_from_error(exc)

    @bp.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        return problem_from_http(exc)


def problem_from_http(exc: HTTPException) -> Response:
    """An HTTP error as a problem, keeping its headers (Allow on 405, Retry-After on 429/503)."""
    headers = {name: value for name, value in exc.get_headers()
               if name.lower() != "content-type"}
    return problem(exc.code or 500, exc.description, headers=headers)


def answer_unrouted_as_problems(bp: Blueprint, prefix: str) -> None:
    """An unknown path (404) or a wrong method (405) fails before any blueprint is chosen, so the
    blueprint's own handler never sees it: under `prefix` it is answered as a problem too; any
    other path keeps the default answer."""

    @bp.app_errorhandler(HTTPException)
    def _unrouted(exc: HTTPException) -> Response | HTTPException:
        if request.path == prefix or request.path.startswith(prefix + "/"):
            return problem_from_http(exc)
        return exc
