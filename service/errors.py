"""The exception hierarchy. Domain code raises these; web, api, webhook and cli translate them."""

from __future__ import annotations

from dataclasses import dataclass


class CommuniqueError(Exception):
    """Base of every error the service raises on purpose."""


class ConfigError(CommuniqueError):
    """A setting is missing or invalid; the message names the variable."""


@dataclass(frozen=True)
class FieldError:
    field: str | None
    reason: str
    row: int | None = None
    value: str | None = None

    def as_dict(self) -> dict[str, object]:
        data: dict[str, object] = {"reason": self.reason}
        if self.field is not None:
            data["field"] = self.field
        if self.row is not None:
            data["row"] = self.row
        if self.value is not None:
            data["value"] = self.value
        return data


class ValidationError(CommuniqueError):
    """Input was rejected; `errors` says which field and why."""

    def __init__(self, errors: list[FieldError] | FieldError | str, field: str | None = None):
        if isinstance(errors, str):
            errors = [FieldError(field, errors)]
        elif isinstance(errors, FieldError):
            errors = [errors]
        self.errors = errors
        super().__init__("; ".join(_describe(e) for e in errors))


def _describe(error: FieldError) -> str:
    where = []
    if error.row is not None:
        where.append(f"row {error.row}")
    if error.field:
        where.append(error.field)
    return f"{', '.join(where)}: {error.reason}" if where else error.reason


class NotFound(CommuniqueError):
    """The thing asked for does not exist."""


class Conflict(CommuniqueError):
    """The request clashes with the current state (e.g. editing a running blast)."""


class DuplicateRelease(Conflict):
    """The release being created has the title and body of an existing one (`existing_id`)."""

    def __init__(self, existing_id: int, slug: str):
        self.existing_id = existing_id
        self.slug = slug
        super().__init__(f"this release was already imported as release {existing_id} ({slug})")


class RenderError(CommuniqueError):
    """A template or variable error, reported with the line where it happened."""

    def __init__(self, message: str, line: int | None = None, template: str | None = None):
        self.line = line
        self.template = template
        where = f"{template or 'template'}, line {line}: " if line else ""
        super().__init__(f"{where}{message}")


class WebhookRejected(CommuniqueError):
    """An incoming webhook failed verification or validation."""

    def __init__(self, message: str, status: int = 400, field: str | None = None):
        self.status = status
        self.field = field
        super().__init__(message)
