"""API keys: shown once, stored hashed, revocable; the CLI and the bearer check agree."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from sqlalchemy import select

from service.accounts.api_keys import create_api_key, revoke_api_key, verify_api_key
from service.cli import main
from service.models import ApiKey

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)


def test_key_is_stored_as_a_hash_only(db):
    """The database holds the SHA-256 of the key and a short prefix, never the key itself."""
    key, token = create_api_key(db, "wordpress", now=NOW)
    db.commit()
    stored = db.scalar(select(ApiKey).where(ApiKey.id == key.id))
    assert stored.key_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in (stored.key_hash, stored.prefix) and token.startswith(stored.prefix)
    assert verify_api_key(db, token, now=NOW).id == key.id
    assert verify_api_key(db, token + "x", now=NOW) is None


def test_revoked_key_no_longer_verifies(db):
    """A revoked key is refused from the moment it is revoked."""
    key, token = create_api_key(db, "drupal", now=NOW)
    revoke_api_key(db, key.id, now=NOW)
    db.commit()
    assert verify_api_key(db, token, now=NOW) is None


def test_cli_create_list_revoke(runner, client):
    """`api-keys create` prints the key once; it authenticates until `api-keys revoke`."""
    created = runner.invoke(main, ["api-keys", "create", "strapi", "--json"])
    assert created.exit_code == 0, created.output
    data = json.loads(created.output)
    headers = {"Authorization": f"Bearer {data['key']}"}
    assert client.get("/api/v1/lists", headers=headers).status_code == 200

    listed = runner.invoke(main, ["api-keys", "list"])
    assert "strapi" in listed.output and data["key"] not in listed.output

    revoked = runner.invoke(main, ["api-keys", "revoke", str(data["id"])])
    assert revoked.exit_code == 0, revoked.output
    response = client.get("/api/v1/lists", headers=headers)
    assert response.status_code == 401
    assert response.mimetype == "application/problem+json"
    assert runner.invoke(main, ["api-keys", "revoke", "999"]).exit_code == 1
