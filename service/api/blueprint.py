"""The "api" blueprint itself and what its resources share: bearer-key authentication with scopes,
the route registry behind the OpenAPI document, JSON and paging helpers, problem documents."""

from __future__ import annotations

import logging
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, g, json, request
from flask_limiter import RateLimitExceeded

from service.accounts.api_keys import has_scope, verify_api_key
from service.api.openapi import Registry
from service.config import Settings
from service.db import utcnow
from service.http.context import db_session
from service.http.problems import (
    RequestRejected,
    answer_errors_as_problems,
    answer_unrouted_as_problems,
    problem,
)
from service.http.security import api_key_identity

if TYPE_CHECKING:
    from flask_limiter import Limiter
    from werkzeug.sansio.response import Response as BaseResponse

log = logging.getLogger(__name__)

PREFIX = "/api/v1"
bp = Blueprint("api", __name__, url_prefix=PREFIX)
registry = Registry(bp, PREFIX)
PUBLIC_ENDPOINTS = {"api.openapi_document"}

PAGE_QUERY: dict[str, Any] = {
    "offset": {"type": "integer", "minimum": 0, "maximum": 10_000_000, "default": 0},
    "limit": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
}


def page_schema(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["items", "total", "offset", "limit"],
            "properties": {"items": {"type": "array", "items": item},
                           "total": {"type": "integer"}, "offset": {"type": "integer"},
                           "limit": {"type": "integer"}}}


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(data), status=status, mimetype="application/json")
    response.headers.update(headers or {})
    return response


def iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def init_limits(limiter: Limiter, settings: Settings) -> None:
    """Every API request counts against its key and its client address; a request with a bad
    key also against the address's failure limit. Over a limit: 429 problem with Retry-After."""
    from flask_limiter.util import get_remote_address

    limiter.limit(settings.api_rate_limit, key_func=api_key_identity, scope="api-key")(bp)
    limiter.limit(settings.api_ip_rate_limit, key_func=get_remote_address, scope="api-address")(bp)
    limiter.limit(settings.api_auth_failure_rate_limit, key_func=get_remote_address,
                  scope="api-auth-failure", deduct_when=lambda response: response.status_code == 401)(bp)


@bp.before_request
def _authenticate() -> Response | None:
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    key = verify_api_key(db_session(), token.strip(), now=utcnow()) if scheme.lower() == "bearer" \
        else None
    if key is None:
        return problem(401, "a valid API key is required (Authorization: Bearer …)",
                       headers={"WWW-Authenticate": 'Bearer realm="communique"'})
    g.api_key = key
    needed = registry.scopes.get(request.endpoint or "")
    if needed is not None and not has_scope(key, needed):
        return _missing_scope(needed)
    return None


def require_scope(scope: str) -> None:
    """For a view whose body decides what it does (a blast created to be sent at once)."""
    if not has_scope(g.api_key, scope):
        raise RequestRejected(_missing_scope_text(scope), 403)


def _missing_scope_text(scope: str) -> str:
    return (f"this API key lacks the {scope!r} scope "
            f"(communique api-keys create NAME --scope {scope})")


def _missing_scope(scope: str) -> Response:
    return problem(403, _missing_scope_text(scope))


answer_errors_as_problems(bp)
answer_unrouted_as_problems(bp, PREFIX)


@bp.errorhandler(RateLimitExceeded)
def _rate_limited(exc: RateLimitExceeded) -> BaseResponse:
    return exc.get_response()  # the problem document http/security.py made, with Retry-After


def actor() -> str:
    """Who the audit trail names for API changes: the key, never its secret."""
    return f"api-key:{g.api_key.name}"


@bp.get("/openapi.json")
def openapi_document() -> Response:
    try:
        package_version = version("communique")
    except PackageNotFoundError:
        package_version = "0"
    return json_response(registry.document(
        title="Communiqué API", version=package_version,
        description="Contacts, lists, releases and blasts. Authenticate with "
                    "`Authorization: Bearer <key>`; errors are RFC 9457 problem documents."))
