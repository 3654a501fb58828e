"""JSON Schema violations as field errors, for every door that validates JSON (API, webhook)."""

from __future__ import annotations

import re
from typing import Any

from jsonschema import Draft202012Validator

from service.errors import FieldError


def _field_name(error: Any) -> str:
    path = [str(p) for p in error.absolute_path]
    if error.validator == "required":
        missing = re.match(r"'([^']+)' is a required property", error.message)
        if missing:
            path.append(missing.group(1))
    elif error.validator == "additionalProperties":
        extra = re.search(r"\('([^']+)'", error.message)
        if extra:
            path.append(extra.group(1))
    return ".".join(path) or "body"


def validation_errors(validator: Draft202012Validator, data: Any) -> list[FieldError]:
    """The schema violations of `data` as field errors."""
    return [FieldError(_field_name(e), e.message) for e in validator.iter_errors(data)]
