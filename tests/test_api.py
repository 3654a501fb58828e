"""JSON API: bearer keys, contacts and lists, releases and previews, blasts; problem+json errors."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from service.accounts.api_keys import create_api_key, revoke_api_key
from service.models import Blast, BlastStatus

NOW = datetime(2025, 6, 2, 9, 0, tzinfo=UTC)
CSV = ("email,prénom,nom,média,langue,pays\r\n"
       "amina.benali@lematin.example.ma,Amina,Benali,Le Matin,fr,MA\r\n"
       "karim@medias24.example.ma,Karim,Alaoui,Médias24,fr,MA\r\n"
       "j.smith@reuters.example.com,John,Smith,Reuters,en,GB\r\n").encode()


@pytest.fixture
def auth(db) -> dict[str, str]:
    """Authorization headers with a fresh API key."""
    _key, token = create_api_key(db, "tests", now=NOW, scopes=["read", "write", "send", "approve"])
    db.commit()
    return {"Authorization": f"Bearer {token}"}


def test_every_resource_requires_a_key(client, db):
    """Without a key, with a wrong one or with a revoked one, every resource answers 401."""
    key, token = create_api_key(db, "soon revoked", now=NOW)
    revoke_api_key(db, key.id, now=NOW)
    db.commit()
    for path in ("/api/v1/contacts", "/api/v1/contacts/1", "/api/v1/lists", "/api/v1/releases",
                 "/api/v1/blasts", "/api/v1/blasts/1/deliveries"):
        for headers in ({}, {"Authorization": "Bearer cq_wrong"}, {"Authorization": f"Bearer {token}"},
                        {"Authorization": f"Basic {token}"}):
            response = client.get(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.mimetype == "application/problem+json"
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/api/v1/openapi.json").status_code == 200, "the document is public"


def test_contacts_import_search_and_paginate(client, auth):
    """A CSV import, then search with filters and pages; total counts every match."""
    imported = client.post("/api/v1/contacts/import?list=presse-nationale", data=CSV,
                           headers={**auth, "Content-Type": "text/csv"})
    assert imported.status_code == 200, imported.json
    assert imported.json["created"] == 3

    page = client.get("/api/v1/contacts?limit=2&offset=0", headers=auth).json
    assert (page["total"], len(page["items"]), page["limit"]) == (3, 2, 2)
    rest = client.get("/api/v1/contacts?limit=2&offset=2", headers=auth).json
    assert len(rest["items"]) == 1
    emails = {c["email"] for c in page["items"] + rest["items"]}
    assert len(emails) == 3

    english = client.get("/api/v1/contacts?language=en", headers=auth).json
    assert [c["email"] for c in english["items"]] == ["j.smith@reuters.example.com"]
    assert client.get("/api/v1/contacts?query=benali", headers=auth).json["total"] == 1
    in_list = client.get("/api/v1/contacts?list=presse-nationale&country=MA", headers=auth).json
    assert in_list["total"] == 2 and in_list["items"][0]["lists"] == ["presse-nationale"]
    lists = client.get("/api/v1/lists", headers=auth).json
    assert lists["items"] == [{"name": "presse-nationale", "contact_count": 3}]


def test_contact_create_get_update_delete(client, auth):
    """A contact goes through create, get, update and delete; each answer is the stored contact."""
    created = client.post("/api/v1/contacts", headers=auth, json={
        "email": "Nadia.Idrissi@2M.example.ma", "first_name": "Nadia", "last_name": "Idrissi",
        "media_type": "tv", "tags": ["tourisme"], "lists": ["tv-radio"]})
    assert created.status_code == 201, created.json
    contact = created.json
    assert contact["email"] == "Nadia.Idrissi@2m.example.ma", "the domain is lower-cased"
    assert contact["lists"] == ["tv-radio"]
    assert created.headers["Location"] == f"/api/v1/contacts/{contact['id']}"

    path = f"/api/v1/contacts/{contact['id']}"
    assert client.get(path, headers=auth).json["tags"] == ["tourisme"]
    updated = client.patch(path, headers=auth, json={"outlet": "2M", "tags": ["culture"]})
    assert updated.status_code == 200
    assert (updated.json["outlet"], updated.json["tags"]) == ("2M", ["culture"])
    assert client.delete(path, headers=auth).status_code == 204
    gone = client.get(path, headers=auth)
    assert gone.status_code == 404 and gone.mimetype == "application/problem+json"


def test_contact_errors_are_problem_documents(client, auth):
    """Validation names each field (400), a duplicate is a conflict (409), JSON is required (415)."""
    bad = client.post("/api/v1/contacts", headers=auth, json={"email": "not-an-address",
                                                              "media_type": "carrier pigeon"})
    assert bad.status_code == 400
    assert bad.mimetype == "application/problem+json"
    assert bad.json["status"] == 400 and bad.json["title"] == "Bad Request"
    assert {e["field"] for e in bad.json["errors"]} == {"email", "media_type"}

    unknown = client.post("/api/v1/contacts", headers=auth, json={"email": "a@b.example", "x": 1})
    assert unknown.status_code == 400 and unknown.json["errors"][0]["field"] == "x"
    missing = client.post("/api/v1/contacts", headers=auth, json={})
    assert missing.json["errors"][0]["field"] == "email"

    client.post("/api/v1/contacts", headers=auth, json={"email": "dup@example.org"})
    duplicate = client.post("/api/v1/contacts", headers=auth, json={"email": "DUP@example.org"})
    assert duplicate.status_code == 409 and duplicate.json["status"] == 409

    form = client.post("/api/v1/contacts", headers=auth, data={"email": "a@b.example"})
    assert form.status_code == 415
    not_json = client.post("/api/v1/contacts", headers={**auth, "Content-Type": "application/json"},
                           data=b"{nope")
    assert not_json.status_code == 400 and not_json.json["errors"][0]["field"] == "body"
    paging = client.get("/api/v1/contacts?limit=abc&offset=-1", headers=auth)
    assert paging.status_code == 400
    assert {e["field"] for e in paging.json["errors"]} == {"limit"}


def test_release_preview_and_blast_lifecycle(client, auth):
    """A release is created from Markdown, previewed as html/text/eml, sent by a blast whose
    progress, deliveries and state changes go through the API."""
    client.post("/api/v1/contacts/import?list=presse-nationale", data=CSV,
                headers={**auth, "Content-Type": "text/csv"})
    created = client.post("/api/v1/releases", headers=auth, json={
        "title": "Tournée régionale", "body": "**Rabat.** Le Maroc en tournée.", "language": "fr"})
    assert created.status_code == 201, created.json
    release_id = created.json["id"]
    patched = client.patch(f"/api/v1/releases/{release_id}", headers=auth,
                           json={"kicker": "Communiqué"})
    assert patched.status_code == 200 and patched.json["kicker"] == "Communiqué"

    html = client.get(f"/api/v1/releases/{release_id}/preview?email=amina.benali@lematin.example.ma",
                      headers=auth)
    assert html.status_code == 200 and html.mimetype == "text/html"
    assert "Le Maroc en tournée" in html.get_data(as_text=True)
    text = client.get(f"/api/v1/releases/{release_id}/preview?format=text", headers=auth)
    assert text.mimetype == "text/plain" and "Le Maroc en tournée" in text.get_data(as_text=True)
    eml = client.get(f"/api/v1/releases/{release_id}/preview?format=eml", headers=auth)
    assert eml.mimetype == "message/rfc822" and b"Subject:" in eml.data
    bad = client.get(f"/api/v1/releases/{release_id}/preview?format=pdf", headers=auth)
    assert bad.status_code == 400 and bad.json["errors"][0]["field"] == "format"

    blast = client.post("/api/v1/blasts", headers=auth, json={
        "release_id": release_id, "lists": ["presse-nationale"],
        "filters": {"countries": ["MA"]}, "send_at": "2030-01-01T09:00:00+00:00"})
    assert blast.status_code == 201, blast.json
    blast_id = blast.json["id"]
    assert (blast.json["status"], blast.json["recipient_count"]) == ("scheduled", 2)
    listed = client.get("/api/v1/blasts?status=scheduled", headers=auth).json
    assert [b["id"] for b in listed["items"]] == [blast_id]
    paused = client.post(f"/api/v1/blasts/{blast_id}/pause", headers=auth)
    assert paused.status_code == 409 and paused.mimetype == "application/problem+json"
    cancelled = client.post(f"/api/v1/blasts/{blast_id}/cancel", headers=auth)
    assert cancelled.status_code == 200 and cancelled.json["status"] == "cancelled"

    resent = client.post(f"/api/v1/blasts/{blast_id}/resend-to-unsent", headers=auth)
    assert resent.status_code == 201 and resent.json["resend_of_id"] == blast_id
    now_blast = client.post("/api/v1/blasts", headers=auth, json={
        "release_id": release_id, "lists": ["presse-nationale"]})
    assert now_blast.json["status"] == "running"
    status = client.get(f"/api/v1/blasts/{now_blast.json['id']}", headers=auth).json
    assert status["progress"]["counts"]["queued"] == 3
    deliveries = client.get(f"/api/v1/blasts/{now_blast.json['id']}/deliveries?status=queued&limit=2",
                            headers=auth).json
    assert (deliveries["total"], len(deliveries["items"])) == (3, 2)
    assert client.get("/api/v1/blasts/999", headers=auth).status_code == 404
    unknown_list = client.post("/api/v1/blasts", headers=auth, json={
        "release_id": release_id, "lists": ["nope"]})
    assert unknown_list.status_code == 400


def test_release_update_after_a_blast_started_is_409(client, db, auth):
    """PATCH on a release answers 200 while its blast is only scheduled and 409 (with the reason)
    once the blast has started; the release stays as it was sent."""
    created = client.post("/api/v1/releases", headers=auth, json={
        "title": "Tournée régionale", "body": "Le Maroc en tournée.", "language": "fr"})
    release_id = created.json["id"]
    blast = Blast(release_id=release_id, status=BlastStatus.scheduled, send_at=NOW)
    db.add(blast)
    db.commit()
    path = f"/api/v1/releases/{release_id}"
    assert client.patch(path, headers=auth, json={"kicker": "Avant"}).status_code == 200
    blast.status, blast.started_at = BlastStatus.running, NOW
    db.commit()
    refused = client.patch(path, headers=auth, json={"kicker": "Après"})
    assert refused.status_code == 409
    assert "can no longer be edited" in refused.json["errors"][0]["reason"]
    assert client.get(path, headers=auth).json["kicker"] == "Avant"
