"""Outbox pages: the messages the demo's catch-all SMTP server received (serve --demo only)."""

from __future__ import annotations

from flask import abort, current_app, render_template
from flask.typing import ResponseReturnValue

from service.http.context import current_settings
from service.ops import outbox
from service.web.auth import login_required
from service.web.blueprint import bp

OUTBOX_ENABLED = "COMMUNIQUE_OUTBOX"


def is_enabled() -> bool:
    return bool(current_app.config.get(OUTBOX_ENABLED))


@bp.app_context_processor
def _outbox_flag() -> dict[str, bool]:
    return {"outbox_enabled": is_enabled()}


@bp.route("/outbox")
@login_required
def outbox_index() -> ResponseReturnValue:
    if not is_enabled():
        abort(404)
    return render_template("outbox/index.html", messages=outbox.list_outbox(current_settings()))


@bp.route("/outbox/<name>")
@login_required
def outbox_message(name: str) -> ResponseReturnValue:
    if not is_enabled():
        abort(404)
    message, raw = outbox.read_outbox_message(current_settings(), name)
    html, text = outbox.message_parts(message)
    return render_template("outbox/message.html", name=name, message=message, html=html, text=text,
                           raw=raw.decode("utf-8", "replace"),
                           headers=[(k, str(v)) for k, v in message.items()])
