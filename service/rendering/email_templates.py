"""Where the email templates are: one source, the top-level templates/email/, shipped in the wheel
as service/email_templates/ (setup.py maps the folder to a package)."""

from __future__ import annotations

from pathlib import Path

_SERVICE = Path(__file__).resolve().parent.parent
_INSTALLED = _SERVICE / "email_templates"  # an installed wheel
_SOURCE = _SERVICE.parent / "templates" / "email"  # a checkout or an editable install

TEMPLATES: Path = _INSTALLED if _INSTALLED.is_dir() else _SOURCE
