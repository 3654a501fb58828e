"""The OpenAPI 3.1 document, generated from the routes themselves: each API view is declared with
`Registry.route(...)` together with the JSON Schemas of its query, body and response; the same
schemas validate the request before the view runs, so the document cannot drift from the code."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Blueprint, request
from jsonschema import Draft202012Validator

from service.db import MAX_ID
from service.errors import FieldError, ValidationError
from service.http.inputs import parse_json
from service.http.problems import RequestRejected
from service.http.schemas import validation_errors

Schema = dict[str, Any]
JSON = "application/json"
PROBLEM = "application/problem+json"

PROBLEM_SCHEMA: Schema = {
    "type": "object",
    "required": ["type", "title", "status", "errors"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {"type": "array", "items": {
            "type": "object", "required": ["reason"],
            "properties": {"field": {"type": "string"}, "reason": {"type": "string"},
                           "row": {"type": "integer"}}}},
    },
}

ERROR_DESCRIPTIONS = {400: "Invalid request (the `errors` list names each field)",
                      401: "Missing, unknown or revoked API key",
                      403: "The API key lacks the scope this action needs",
                      404: "Not found", 409: "Conflicts with the current state",
                      413: "Body too large", 415: "Unsupported content type",
                      422: "Understood but cannot be done (e.g. a send time in the past)"}


@dataclass
class Operation:
    method: str
    path: str
    endpoint: str
    summary: str
    tag: str
    query: Schema | None
    body: Schema | None
    body_type: str
    responses: dict[int, tuple[str, Schema | None]]
    errors: tuple[int, ...]
    scope: str = "read"
    path_params: dict[str, Schema] = field(default_factory=dict)


class Registry:
    """Routes of one blueprint plus what the document says about them."""

    def __init__(self, blueprint: Blueprint, prefix: str) -> None:
        self.blueprint = blueprint
        self.prefix = prefix
        self.operations: list[Operation] = []
        self.components: dict[str, Schema] = {"Problem": PROBLEM_SCHEMA}
        self.scopes: dict[str, str] = {}  # endpoint -> the API key scope it needs

    def schema(self, name: str, schema: Schema) -> Schema:
        """Register a named component; returns a `$ref` to it (for response documentation)."""
        self.components[name] = schema
        return {"$ref": f"#/components/schemas/{name}"}

    def route(self, rule: str, method: str, *, summary: str, tag: str,
              query: Schema | None = None, body: Schema | None = None, body_type: str = JSON,
              response: Schema | None = None, status: int = 200, response_type: str = JSON,
              responses: dict[int, tuple[str, Schema | None]] | None = None,
              errors: tuple[int, ...] = (400, 404),
              scope: str | None = None) -> Callable[[Callable[..., Any]], Any]:
        """Register a view; it receives `query=` (coerced, validated) and `body=` when declared.
        `scope` is what the API key needs (default: read for GET, write otherwise)."""
        needed = scope or ("read" if method == "GET" else "write")
        query_validator = Draft202012Validator(query) if query else None
        body_validator = Draft202012Validator(body) if body and body_type == JSON else None
        path, params = _openapi_path(rule)

        def decorator(view: Callable[..., Any]) -> Any:
            @functools.wraps(view)
            def wrapper(**kwargs: Any) -> Any:
                if query is not None and query_validator is not None:
                    kwargs["query"] = _validated(query_validator, _coerce(query, request.args))
                if body is not None:
                    kwargs["body"] = _parse_body(body_type, body_validator)
                return view(**kwargs)

            self.blueprint.add_url_rule(rule, view.__name__, wrapper, methods=[method])
            self.scopes[f"{self.blueprint.name}.{view.__name__}"] = needed
            self.operations.append(Operation(
                method=method.lower(), path=self.prefix + path, endpoint=view.__name__,
                summary=summary, tag=tag, query=query, body=body, body_type=body_type,
                responses=responses or {status: (response_type, response)}, errors=errors,
                scope=needed, path_params=params))
            return wrapper

        return decorator

    def document(self, *, title: str, version: str, description: str = "") -> dict[str, Any]:
        paths: dict[str, dict[str, Any]] = {}
        for op in self.operations:
            paths.setdefault(op.path, {})[op.method] = _operation(op)
        return {
            "openapi": "3.1.0",
            "info": {"title": title, "version": version, "description": description},
            "paths": paths,
            "components": {
                "schemas": self.components,
                "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer",
                                                   "description": "`communique api-keys create NAME`"}},
            },
            "security": [{"bearerAuth": []}],
        }


def _operation(op: Operation) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": schema}
        for name, schema in op.path_params.items()]
    if op.query:
        required = set(op.query.get("required", ()))
        for name, schema in op.query.get("properties", {}).items():
            parameters.append({"name": name, "in": "query", "required": name in required,
                               "schema": schema})
    responses: dict[str, Any] = {}
    for status, (content_type, schema) in op.responses.items():
        entry: dict[str, Any] = {"description": "Success"}
        if status != 204:
            entry["content"] = {kind: {"schema": schema or {}} for kind in content_type.split(",")}
        responses[str(status)] = entry
    for status in sorted({401, 403, *op.errors} | ({400, 415} if op.body else set())):
        responses[str(status)] = {
            "description": ERROR_DESCRIPTIONS[status],
            "content": {PROBLEM: {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    result: dict[str, Any] = {"operationId": op.endpoint, "summary": op.summary, "tags": [op.tag],
                              "parameters": parameters, "responses": responses,
                              "description": f"API key scope: `{op.scope}`.",
                              "security": [{"bearerAuth": [op.scope]}]}
    if op.body is not None:
        result["requestBody"] = {"required": True, "content": {op.body_type: {"schema": op.body}}}
    return result


def _openapi_path(rule: str) -> tuple[str, dict[str, Schema]]:
    params: dict[str, Schema] = {}

    def replace(match: re.Match[str]) -> str:
        converter, name = match.group(1), match.group(2)
        params[name] = ({"type": "integer", "minimum": 1, "maximum": MAX_ID} if converter == "id"
                        else {"type": "string", "minLength": 1})
        return "{" + name + "}"

    return re.sub(r"<(?:(\w+):)?(\w+)>", replace, rule), params


def _coerce(schema: Schema, args: Any) -> dict[str, Any]:
    """Query strings are text; turn them into the types the schema declares before validating."""
    properties = schema.get("properties", {})
    values: dict[str, Any] = {}
    errors: list[FieldError] = []
    for name, prop in properties.items():
        if name not in args:
            continue
        raw = args.get(name)
        kind = prop.get("type")
        if kind == "integer":
            try:
                values[name] = int(raw)
            except ValueError:
                errors.append(FieldError(name, "must be an integer"))
        elif kind == "boolean":
            if raw.lower() not in ("true", "false", "1", "0"):
                errors.append(FieldError(name, "must be true or false"))
            values[name] = raw.lower() in ("true", "1")
        else:
            values[name] = raw
    if errors:
        raise ValidationError(errors)
    return values


def _parse_body(body_type: str, validator: Draft202012Validator | None) -> Any:
    mimetype = request.mimetype
    if mimetype != body_type:
        raise RequestRejected(f"the body must be {body_type}", status=415)
    if body_type != JSON:
        return request.get_data()
    assert validator is not None
    return _validated(validator, parse_json(request.get_data()))


def _validated(validator: Draft202012Validator, data: Any) -> Any:
    errors = validation_errors(validator, data)
    if errors:
        raise ValidationError(errors)
    return data
