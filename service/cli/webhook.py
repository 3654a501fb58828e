"""`communique webhook sign FILE`: the headers a CMS would send, and a curl command to try them."""

from __future__ import annotations

import json
import shlex
import uuid
from datetime import UTC, datetime
from pathlib import Path

import click
from standardwebhooks.webhooks import Webhook

from service.cli.context import Context, emit, json_option, pass_context


def register(main: click.Group) -> None:
    main.add_command(webhook)


@click.group()
def webhook() -> None:
    """Tools for integrating a CMS with POST /webhooks/cms."""


@webhook.command("sign")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--id", "msg_id", help="webhook-id to use (default: a new random one).")
@click.option("--secret", help="whsec_… secret (default: COMMUNIQUE_WEBHOOK_SECRET).")
@click.option("--url", help="Endpoint for the curl command (default: <base url>/webhooks/cms).")
@json_option
@pass_context
def sign(context: Context, file: Path, msg_id: str | None, secret: str | None, url: str | None,
         as_json: bool) -> None:
    """Sign FILE (a JSON payload) as a CMS would; valid for 5 minutes from now."""
    secret = secret or context.settings.webhook_secret
    if not secret:
        raise click.UsageError("no secret: set COMMUNIQUE_WEBHOOK_SECRET or pass --secret")
    body = file.read_bytes()
    try:
        text = body.decode()
        json.loads(text)
    except (UnicodeDecodeError, ValueError) as exc:
        raise click.UsageError(f"{file} is not UTF-8 JSON: {exc}") from exc
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    now = datetime.now(UTC)
    headers = {"webhook-id": msg_id, "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": Webhook(secret).sign(msg_id, now, text)}
    url = url or context.settings.base_url.rstrip("/") + "/webhooks/cms"
    curl = " \\\n  ".join(
        [f"curl -sS -X POST {shlex.quote(url)}", "-H 'Content-Type: application/json'"]
        + [f"-H {shlex.quote(f'{k}: {v}')}" for k, v in headers.items()]
        + [f"--data-binary @{shlex.quote(str(file))}"])
    lines = "\n".join(f"{k}: {v}" for k, v in headers.items())
    emit({"headers": headers, "curl": curl}, as_json, f"{lines}\n\n{curl}")
