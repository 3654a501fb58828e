"""Where the email templates are: the top-level templates/email/ of the source tree (their one source)."""

from __future__ import annotations

from pathlib import Path

TEMPLATES = Path(__file__).resolve().parent.parent.parent / "templates" / "email"
