"""Untrusted input, bounded before it reaches a stage: ids in URLs (the `id` converter), integer
query parameters, and JSON bodies (size, depth, duplicate keys, encoding) for the api and webhook."""

from __future__ import annotations

import functools
import itertools
import json
import re
from typing import Any

from flask import Flask, request
from werkzeug.exceptions import BadRequest
from werkzeug.routing import IntegerConverter

from service.db import MAX_ID
from service.errors import ValidationError

# Our JSON documents are a few levels deep (an event, its data, a list of objects); past this a
# body is an attack, and CPython's parser would recurse until RecursionError.
MAX_JSON_DEPTH = 32
MAX_PAGE = 100_000  # list pages: 5 to 10 million rows; a larger page number is a typo or a probe
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_JSON_BRACKET = re.compile(r"[\[\]{}]")


class IdConverter(IntegerConverter):
    """`<id:name>`: a positive row id; a larger number than a row can have does not match (404)."""

    def __init__(self, map: Any) -> None:  # noqa: A002 - werkzeug's parameter name
        super().__init__(map, min=1, max=MAX_ID)


def init_app(app: Flask) -> None:
    app.url_map.converters["id"] = IdConverter


def query_int(name: str, default: int, *, minimum: int = 1, maximum: int = MAX_ID) -> int:
    """An integer query (or form) parameter within bounds; anything else is a 400."""
    raw = request.values.get(name)
    if raw is None or raw == "":
        return default
    if not re.fullmatch(r"[0-9]{1,12}", raw.strip()) or not minimum <= int(raw) <= maximum:
        raise BadRequest(f"{name} must be a whole number from {minimum} to {maximum}")
    return int(raw)


def optional_query_id(name: str) -> int | None:
    """An optional id in the query string; out of range or not a number is a 400."""
    if not request.values.get(name):
        return None
    return query_int(name, 0, minimum=1, maximum=MAX_ID)


def parse_json(body: bytes, *, field: str = "body") -> Any:
    """Strict JSON: UTF-8, nesting at most MAX_JSON_DEPTH, no duplicate keys. Anything else is a
    ValidationError naming `field` (a 400 problem), never a RecursionError."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"is not UTF-8 text (byte {exc.start})", field=field) from exc
    if json_depth(text) > MAX_JSON_DEPTH:
        raise ValidationError(f"is nested deeper than {MAX_JSON_DEPTH} levels", field=field)
    try:
        return json.loads(text, object_pairs_hook=functools.partial(_refuse_duplicate_keys, field))
    except json.JSONDecodeError as exc:
        raise ValidationError(f"is not valid JSON ({exc})", field=field) from exc
    except RecursionError as exc:  # depth is checked above; this is the last line of defence
        raise ValidationError("is nested too deeply", field=field) from exc


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects, strings skipped; linear time, no recursion."""
    brackets = _JSON_BRACKET.findall(_JSON_STRING.sub("", text))
    steps = (1 if bracket in "[{" else -1 for bracket in brackets)
    return max(itertools.accumulate(steps, initial=0))


def _refuse_duplicate_keys(field: str, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # "Last wins" differs between parsers: what we act on could differ from what was signed
            # or what another system read; RFC 8259 leaves it undefined, so we refuse it.
            raise ValidationError(f"has the key {key!r} twice", field=field)
        result[key] = value
    return result
