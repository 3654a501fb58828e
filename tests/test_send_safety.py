"""Send safety: one copy per journalist per release (all language variants together), no
accidental duplicate releases, and no send time in the past."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from conftest import SAMPLES
from sqlalchemy import func, select
from test_blasts import add_list

from service.accounts.api_keys import create_api_key
from service.cli import main
from service.delivery import blasts
from service.delivery.worker import run_worker
from service.errors import Conflict, DuplicateRelease, ValidationError
from service.models import Blast, Release
from service.releases.store import create_release

TASK_FORCE = SAMPLES / "onmt-task-force-2022-07-06.md"


def _release_with_english_variant(db, settings, now):  # type: ignore[no-untyped-def]
    french = create_release(db, settings, body=TASK_FORCE.read_text(encoding="utf-8"), now=now)
    english = create_release(db, settings, title="ONMT task force", body="The task force meets.",
                             language="en", variant_of=french.id, now=now)
    db.commit()
    return french, english


def _blast_count(db) -> int:  # type: ignore[no-untyped-def]
    count = int(db.scalar(select(func.count()).select_from(Blast)) or 0)
    db.commit()
    return count


def test_a_second_blast_leaves_out_whoever_received_any_variant(db, smtp_settings, smtpd) -> None:  # type: ignore[no-untyped-def]
    """After a blast of the French release reached 5 journalists, a blast of its English variant to
    the same list (now 7) sends only to the 2 newcomers and says 5 were left out; a third blast that
    would reach nobody new is refused and creates nothing; asked for on purpose, everyone gets it."""
    now = datetime.now(UTC)
    french, english = _release_with_english_variant(db, smtp_settings, now)
    add_list(db, "presse", 5)
    first = blasts.create_blast(db, smtp_settings, release_id=french.id, list_names=["presse"], now=now)
    db.commit()
    run_worker(smtp_settings, until_idle=True, include_due=False)
    assert len(smtpd.handler.recipient_counts()) == 5

    add_list(db, "presse", 2, start=5)
    audience = blasts.describe_audience(db, english.id, ["presse"], None)
    assert (audience.count, audience.already_sent) == (2, 5)
    assert audience.last_sent_at is not None and audience.last_sent_at >= first.created_at
    second = blasts.create_blast(db, smtp_settings, release_id=english.id, list_names=["presse"],
                                 now=datetime.now(UTC))
    db.commit()
    assert (second.recipient_count, second.already_sent_count) == (2, 5)
    run_worker(smtp_settings, until_idle=True, include_due=False)
    received = smtpd.handler.recipient_counts()
    assert len(received) == 7 and set(received.values()) == {1}, "nobody got the release twice"

    before = _blast_count(db)
    with pytest.raises(Conflict, match="all 7 recipients already received this release"):
        blasts.create_blast(db, smtp_settings, release_id=french.id, list_names=["presse"],
                            now=datetime.now(UTC))
    db.rollback()
    assert _blast_count(db) == before, "a refused blast leaves nothing behind"

    again = blasts.create_blast(db, smtp_settings, release_id=french.id, list_names=["presse"],
                                now=datetime.now(UTC), include_already_sent=True)
    db.commit()
    assert (again.recipient_count, again.already_sent_count) == (7, 7)


def test_cli_says_who_was_left_out_and_refuses_a_blast_to_nobody_new(db, runner, smtp_settings,  # type: ignore[no-untyped-def]
                                                                    smtpd) -> None:
    """`blasts create` prints how many already received the release and leaves them out; when all
    did, it creates nothing and exits 1 naming the count and the flag; --include-already-sent
    includes them."""
    now = datetime.now(UTC)
    french, _english = _release_with_english_variant(db, smtp_settings, now)
    add_list(db, "presse", 3)
    blasts.create_blast(db, smtp_settings, release_id=french.id, list_names=["presse"], now=now)
    db.commit()
    run_worker(smtp_settings, until_idle=True, include_due=False)
    add_list(db, "presse", 1, start=3)

    result = runner.invoke(main, ["blasts", "create", "--release", str(french.id), "--list", "presse",
                                  "--at", (now + timedelta(hours=1)).isoformat(), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert (data["recipients"], data["already_sent"]) == (1, 3)
    text = runner.invoke(main, ["blasts", "create", "--release", str(french.id), "--list", "presse",
                                "--at", (now + timedelta(hours=2)).isoformat()])
    assert "3 already received this release: left out (--include-already-sent" in text.output

    run_worker(smtp_settings, until_idle=True, include_due=False)  # nothing is due yet: sends nothing
    blasts.create_blast(db, smtp_settings, release_id=french.id, list_names=["presse"],
                        now=datetime.now(UTC), include_already_sent=False)
    db.commit()
    run_worker(smtp_settings, until_idle=True, include_due=False)
    before = _blast_count(db)
    refused = runner.invoke(main, ["blasts", "create", "--release", str(french.id), "--list", "presse"])
    assert refused.exit_code == 1
    assert "all 4 recipients already received this release" in refused.output
    assert "--include-already-sent" in refused.output
    assert _blast_count(db) == before
    forced = runner.invoke(main, ["blasts", "create", "--release", str(french.id), "--list", "presse",
                                  "--include-already-sent", "--json"])
    assert forced.exit_code == 0, forced.output
    assert json.loads(forced.output)["recipients"] == 4


def test_a_send_time_in_the_past_is_refused_everywhere(db, runner, client, settings) -> None:  # type: ignore[no-untyped-def]
    """A send time more than a minute ago: the domain refuses it (field send_at), the CLI exits 2
    naming the time in the office zone, the API answers 422; nothing is created. Within the minute
    it means now."""
    now = datetime.now(UTC)
    release = create_release(db, settings, body=TASK_FORCE.read_text(encoding="utf-8"), now=now)
    add_list(db, "presse", 2)
    db.commit()
    with pytest.raises(ValidationError) as refused:
        blasts.create_blast(db, settings, release_id=release.id, list_names=["presse"],
                            send_at=now - timedelta(hours=12), now=now)
    assert refused.value.errors[0].field == "send_at"
    db.rollback()

    result = runner.invoke(main, ["blasts", "create", "--release", str(release.id), "--list", "presse",
                                  "--at", "2020-01-01T10:00"])
    assert result.exit_code == 2, result.output
    assert "2020-01-01 10:00" in result.output and "Africa/Casablanca" in result.output

    _key, token = create_api_key(db, "tests", now=now, scopes=["read", "write", "send"])
    db.commit()
    response = client.post("/api/v1/blasts", headers={"Authorization": f"Bearer {token}"},
                           json={"release_id": release.id, "lists": ["presse"],
                                 "send_at": "2020-01-01T10:00:00Z"})
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    assert response.json["errors"][0]["field"] == "send_at"
    assert _blast_count(db) == 0

    late = blasts.create_blast(db, settings, release_id=release.id, list_names=["presse"],
                               send_at=now - timedelta(seconds=20), now=now)
    assert late.send_at is not None and late.send_at >= now


def test_importing_the_same_release_twice_answers_with_the_first(db, runner, client, settings) -> None:  # type: ignore[no-untyped-def]
    """The same Markdown imported again (CLI, API, domain) names the existing release and creates
    nothing, unless a new copy is asked for (--new, allow_duplicate)."""
    first = runner.invoke(main, ["releases", "import", str(TASK_FORCE), "--json"])
    assert first.exit_code == 0, first.output
    original = json.loads(first.output)
    again = runner.invoke(main, ["releases", "import", str(TASK_FORCE), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.output) == {**original, "duplicate_of": original["id"]}
    text = runner.invoke(main, ["releases", "import", str(TASK_FORCE)])
    assert f"already imported as release {original['id']}" in text.output and "--new" in text.output
    assert int(db.scalar(select(func.count()).select_from(Release)) or 0) == 1
    db.commit()  # end the read: on SQLite every transaction holds the write lock

    _key, token = create_api_key(db, "tests", now=datetime.now(UTC))
    db.commit()
    body = TASK_FORCE.read_text(encoding="utf-8")
    response = client.post("/api/v1/releases", headers={"Authorization": f"Bearer {token}"},
                           json={"body": body})
    assert response.status_code == 200 and response.json["duplicate_of"] == original["id"]
    with pytest.raises(DuplicateRelease):
        create_release(db, settings, body=body, now=datetime.now(UTC))
    db.rollback()

    copy = runner.invoke(main, ["releases", "import", str(TASK_FORCE), "--new", "--json"])
    assert copy.exit_code == 0, copy.output
    assert json.loads(copy.output)["id"] != original["id"]
    created = client.post("/api/v1/releases", headers={"Authorization": f"Bearer {token}"},
                          json={"body": body, "allow_duplicate": True})
    assert created.status_code == 201 and "duplicate_of" not in created.json
    assert int(db.scalar(select(func.count()).select_from(Release)) or 0) == 3


def test_the_embargo_belongs_to_the_release_and_every_variant(db, runner, client, smtp_settings,  # type: ignore[no-untyped-def]
                                                              smtpd) -> None:
    """An English variant added after the French release's embargo shares it; moving the embargo
    on one variant moves it on all (the API shows it on each); once sending has started every
    variant's web copy is 404 and the English email carries the English embargo mark and banner.
    The CLI sets the embargo at import."""
    from service.releases.store import update_release

    now = datetime.now(UTC)
    until = (now + timedelta(days=2)).replace(microsecond=0)
    imported = runner.invoke(main, ["releases", "import", str(TASK_FORCE), "--json",
                                    "--embargo-until", until.isoformat()])
    assert imported.exit_code == 0, imported.output
    french_id = json.loads(imported.output)["id"]
    english = create_release(db, smtp_settings, title="ONMT task force", body="The task force meets.",
                             language="en", variant_of=french_id, now=now)
    db.commit()
    assert english.embargo_until == until

    later = until + timedelta(days=1)
    update_release(db, smtp_settings, english.id, now=now, embargo_until=later)
    db.commit()
    _key, token = create_api_key(db, "tests", now=now, scopes=["read", "write", "send"])
    db.commit()
    for release_id in (french_id, english.id):
        shown = client.get(f"/api/v1/releases/{release_id}", headers={"Authorization": f"Bearer {token}"})
        assert datetime.fromisoformat(shown.json["embargo_until"]) == later

    add_list(db, "press", 1, language="en")
    blasts.create_blast(db, smtp_settings, release_id=english.id, list_names=["press"], now=now)
    db.commit()
    run_worker(smtp_settings, until_idle=True, include_due=False)
    message = smtpd.handler.messages[0].message()
    assert message["Subject"].startswith("[EMBARGOED until")
    assert "EMBARGO: not for publication before" in message.get_body(("plain",)).get_content()
    slugs = list(db.scalars(select(Release.slug)))
    db.commit()  # end the read: on SQLite every transaction holds the write lock
    assert len(slugs) == 2
    for slug in slugs:
        assert client.get(f"/r/{slug}").status_code == 404, slug


def test_api_keys_have_scopes_and_approve_is_never_a_default(db, runner, client, settings) -> None:  # type: ignore[no-untyped-def]
    """A key created without --scope reads and writes (a draft blast) but gets 403 problem
    documents for sending, pausing or approving; a send key sends but cannot approve; the key
    list shows each key's scopes."""
    now = datetime.now(UTC)
    release = create_release(db, settings, body=TASK_FORCE.read_text(encoding="utf-8"), now=now)
    add_list(db, "presse", 2)
    db.commit()
    created = runner.invoke(main, ["api-keys", "create", "cms", "--json"])
    assert created.exit_code == 0, created.output
    plain = json.loads(created.output)
    assert plain["scopes"] == ["read", "write"]
    sender = json.loads(runner.invoke(main, ["api-keys", "create", "agency", "--scope", "read",
                                             "--scope", "send", "--json"]).output)
    assert sender["scopes"] == ["read", "send"]
    bad = runner.invoke(main, ["api-keys", "create", "x", "--scope", "everything"])
    assert bad.exit_code == 2

    def call(key, path, body=None):  # type: ignore[no-untyped-def]
        headers = {"Authorization": f"Bearer {key['key']}"}
        return client.post(path, headers=headers, json=body) if body is not None \
            else client.get(path, headers=headers)

    assert call(plain, "/api/v1/releases").status_code == 200
    refused = call(plain, "/api/v1/blasts", {"release_id": release.id, "lists": ["presse"]})
    assert refused.status_code == 403 and refused.mimetype == "application/problem+json"
    assert "'send' scope" in refused.json["detail"]
    draft = call(plain, "/api/v1/blasts", {"release_id": release.id, "lists": ["presse"],
                                           "schedule": False})
    assert draft.status_code == 201 and draft.json["status"] == "draft"
    blast_id = draft.json["id"]
    later = (now + timedelta(hours=2)).isoformat()
    assert call(plain, f"/api/v1/blasts/{blast_id}/schedule", {"send_at": later}).status_code == 403
    assert call(plain, f"/api/v1/blasts/{blast_id}/cancel", {}).status_code == 403
    assert call(sender, f"/api/v1/blasts/{blast_id}/approve", {}).status_code == 403
    assert call(sender, f"/api/v1/blasts/{blast_id}/schedule", {"send_at": later}).status_code == 200
    assert call(sender, f"/api/v1/blasts/{blast_id}/cancel", {}).status_code == 200

    listed = runner.invoke(main, ["api-keys", "list"])
    assert "cms  [read, write]" in listed.output and "agency  [read, send]" in listed.output
    document = client.get("/api/v1/openapi.json").json
    assert document["paths"]["/api/v1/blasts/{blast_id}/approve"]["post"]["security"] == \
        [{"bearerAuth": ["approve"]}]


def test_an_approval_covers_the_content_that_was_approved(db, smtp_settings, smtpd,  # type: ignore[no-untyped-def]
                                                          session_factory) -> None:
    """With approval on, a sender approves an editor's blast; the editor then edits the release,
    adds a variant or an attachment: each time the blast goes back to waiting for approval, with
    the reason in its history. A change made behind the approval's back (straight in the database)
    is caught at start: the blast is not started and nothing is sent."""
    import dataclasses

    from sqlalchemy import update

    from service.releases.store import add_attachment, update_release

    settings = dataclasses.replace(smtp_settings, require_approval=True)
    now = datetime.now(UTC)
    release = create_release(db, settings, body=TASK_FORCE.read_text(encoding="utf-8"), now=now)
    add_list(db, "presse", 2)
    db.commit()

    def waiting_blast():  # type: ignore[no-untyped-def]
        blast = blasts.create_blast(db, settings, release_id=release.id, list_names=["presse"],
                                    send_at=now + timedelta(hours=1), now=now, actor="editor@x.org",
                                    actor_role="editor")
        blasts.approve_blast(db, blast.id, actor="sender@x.org", now=now, settings=settings)
        db.commit()
        assert blast.status == "scheduled" and blast.approved_hash
        return blast

    pdf = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    changes = [
        lambda: update_release(db, settings, release.id, now=now, title="Titre corrigé"),
        lambda: create_release(db, settings, title="ONMT task force", body="Text.", language="en",
                               variant_of=release.id, now=now),
        lambda: add_attachment(db, settings, release.id, filename="dossier.pdf",
                               content_type="application/pdf", data=pdf, now=now),
    ]
    for change in changes:
        blast = waiting_blast()
        change()
        db.commit()
        db.refresh(blast)
        assert (blast.status, blast.approved_at) == ("draft", None)
        assert blast.events[-1].action == "approval_withdrawn"
        assert blast.events[-1].detail.startswith("the release changed")
        blasts.cancel_blast(db, blast.id, actor="editor@x.org", now=now)
        db.commit()

    blast = waiting_blast()
    db.execute(update(Release).where(Release.id == release.id).values(body="Texte jamais approuvé."))
    db.commit()
    assert blasts.run_due_blasts(session_factory, settings, now=now + timedelta(hours=2)) == []
    db.refresh(blast)
    assert blast.status == "draft" and blast.events[-1].action == "approval_withdrawn"
    db.commit()  # end the read: on SQLite every transaction holds the write lock
    run_worker(settings, until_idle=True, include_due=False)
    assert smtpd.handler.messages == []
