"""`communique api-keys create|list|revoke`: bearer keys for the JSON API."""

from __future__ import annotations

from typing import Any

import click

from service.accounts.api_keys import create_api_key, list_api_keys, revoke_api_key
from service.cli.context import Context, emit, json_option, pass_context
from service.db import utcnow
from service.models import ApiScope


def register(main: click.Group) -> None:
    main.add_command(api_keys)


@click.group("api-keys")
def api_keys() -> None:
    """Bearer keys for the JSON API (/api/v1)."""


@api_keys.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, type=click.Choice([str(s) for s in ApiScope]),
              help="What the key may do (repeatable): read, write, send, approve. Default: read and "
                   "write; send and approve only when named.")
@json_option
@pass_context
def create(context: Context, name: str, scopes: tuple[str, ...], as_json: bool) -> None:
    """Create a key; its secret is printed once and never again."""
    with context.session() as session:
        key, token = create_api_key(session, name, now=utcnow(), scopes=scopes)
        data = {"id": key.id, "name": key.name, "prefix": key.prefix, "scopes": key.scopes.split(","),
                "key": token}
    emit(data, as_json, f"api key {data['id']} ({name}, scopes {key.scopes}) created; copy it now, "
                        f"it will not be shown again:\n{token}")


@api_keys.command("list")
@json_option
@pass_context
def list_(context: Context, as_json: bool) -> None:
    """List keys (name, prefix, scopes, last use, revocation), never their secrets."""
    with context.session() as session:
        rows: list[dict[str, Any]] = [
            {"id": k.id, "name": k.name, "prefix": k.prefix, "scopes": k.scopes.split(","),
                 "created_at": k.created_at.isoformat(),
                 "last_used_at": k.last_used_at.isoformat() if k.last_used_at else None,
                 "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None}
                for k in list_api_keys(session)]
    lines = [f"{r['id']:>4}  {r['prefix']}…  {r['name']}  [{', '.join(r['scopes'])}]  "
             f"{'revoked ' + str(r['revoked_at']) if r['revoked_at'] else 'active'}" for r in rows]
    emit(rows, as_json, "\n".join(lines) or "no api keys")


@api_keys.command("revoke")
@click.argument("key_id", type=int)
@json_option
@pass_context
def revoke(context: Context, key_id: int, as_json: bool) -> None:
    """Revoke a key: requests using it get 401 from now on."""
    with context.session() as session:
        key = revoke_api_key(session, key_id, now=utcnow())
        data = {"id": key.id, "name": key.name, "revoked_at": key.revoked_at}
    emit(data, as_json, f"api key {key_id} revoked")
