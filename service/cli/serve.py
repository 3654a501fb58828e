"""`communique serve [--demo]`: the web app, the scheduler and a worker in one process (the
embedded default). `--demo` also loads the sample lists and releases, starts the catch-all
Outbox SMTP server and creates a demo admin. Production runs gunicorn and `communique worker`."""

from __future__ import annotations

import logging
import secrets
import signal
import threading
from pathlib import Path
from typing import Any

import click
from sqlalchemy import select
from werkzeug.serving import make_server

from service.cli.context import Context, pass_context
from service.db import session_scope, upgrade_schema, utcnow
from service.models import Release, User

log = logging.getLogger(__name__)

DEMO_DATA = Path(__file__).resolve().parent.parent / "demo"  # shipped in the wheel
SOURCE_ROOT = DEMO_DATA.parent.parent  # the checkout, when running from one (editable install)
DEMO_EMAIL = "demo@communique.example"


def register(main: click.Group) -> None:
    main.add_command(serve)


@click.command("serve")
@click.option("--demo", is_flag=True, help="Load the sample lists and releases, catch all mail in an Outbox.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--worker/--no-worker", default=True, show_default=True, help="Run a delivery worker thread.")
@pass_context
def serve(context: Context, demo: bool, host: str, port: int, worker: bool) -> None:
    """Run the web interface with the scheduler and a worker (Ctrl-C stops everything cleanly)."""
    from service import create_app
    from service.delivery.scheduler import start_scheduler
    from service.delivery.worker import run_worker

    settings = context.settings
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # one line per tick is noise here
    revision = upgrade_schema(context.engine)
    click.echo(f"database ready at revision {revision}")
    outbox = None
    if demo:
        from service.ops.outbox import start_outbox

        outbox = start_outbox(settings)
        click.echo(f"outbox: catching all mail on {settings.smtp_host}:{settings.smtp_port}")
        _load_demo(context)
    app = create_app(settings)
    app.config["COMMUNIQUE_OUTBOX"] = demo
    server = make_server(host, port, app, threaded=True)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    scheduler = start_scheduler(context.session_factory, settings)
    if worker:
        thread = threading.Thread(target=run_worker, args=(settings,),
                                  kwargs={"stop_event": stop, "worker_id": "serve"},
                                  name="worker", daemon=True)
        thread.start()
        threads.append(thread)

    def _shutdown(signum: int, _frame: Any) -> None:
        log.info("serve: signal %s, stopping", signum)
        stop.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _shutdown)
    signal.signal(signal.SIGINT, _shutdown)
    click.echo(f"Communiqué is running at http://{host}:{server.port}/  (Ctrl-C to stop)")
    try:
        server.serve_forever()
    finally:
        stop.set()
        scheduler.shutdown(wait=False)
        for thread in threads:
            thread.join(timeout=settings.smtp_timeout_seconds + 5)
        if outbox is not None:
            outbox.stop()
        server.server_close()
        app.extensions["communique"].engine.dispose()
        click.echo("stopped")


def _demo_release_files() -> list[Path]:
    shared = SOURCE_ROOT.parent / "shared" / "samples" / "releases"
    folder = shared if shared.is_dir() and any(shared.glob("*.md")) else DEMO_DATA / "releases"
    return sorted(folder.glob("*.md"))


def _demo_contact_files() -> tuple[list[Path], list[Path]]:
    """The sample lists: ./contacts/*.csv if there are any, else those shipped in the wheel
    (setup.py ships contacts/ as service/demo/contacts/), else the checkout's contacts/.
    Returns the files and the folders looked in."""
    folders = [Path.cwd() / "contacts", DEMO_DATA / "contacts", SOURCE_ROOT / "contacts"]
    for folder in folders:
        files = sorted(folder.glob("*.csv"))
        if files:
            return files, folders
    return [], folders


def _load_demo(context: Context) -> None:
    """Idempotent: lists re-import without duplicates, releases and the admin are made once."""
    from service.accounts.users import create_user, set_password
    from service.contacts.importing import import_contacts
    from service.releases.store import create_release

    settings = context.settings
    now = utcnow()
    contact_files, folders = _demo_contact_files()
    if not contact_files:
        click.echo("demo: no sample contact lists (*.csv) found in "
                   + ", ".join(str(folder) for folder in folders) + "; no lists loaded", err=True)
    for path in contact_files:
        with session_scope(context.session_factory) as session:
            report = import_contacts(session, path.read_bytes(), list_name=path.stem, now=now,
                                     source=f"demo: {path.name}")
            click.echo(f"demo: list {path.stem}: {report.created} created, {report.updated} updated, "
                       f"{len(report.rejected)} rejected")
    with session_scope(context.session_factory) as session:
        if session.scalar(select(Release.id).limit(1)) is None:
            release_files = _demo_release_files()
            if not release_files:
                click.echo(f"demo: no sample releases (*.md) found in {DEMO_DATA / 'releases'}; "
                           "no releases loaded", err=True)
            for path in release_files:
                release = create_release(session, settings, body=path.read_text(encoding="utf-8"),
                                         language="fr", actor="demo", now=now)
                click.echo(f"demo: release {release.id}: {release.title}")
        saved = Path(settings.instance_path) / "demo-password"
        user_id = session.scalar(select(User.id).where(User.email == DEMO_EMAIL))
        if user_id is None or not saved.is_file():
            password = secrets.token_urlsafe(12)
            if user_id is None:
                create_user(session, email=DEMO_EMAIL, password=password, role="admin", now=now)
            else:
                set_password(session, user_id, password)
            saved.parent.mkdir(parents=True, exist_ok=True)
            saved.write_text(password + "\n")
            saved.chmod(0o600)
    password = saved.read_text().strip()
    click.echo(f"demo: sign in as {DEMO_EMAIL} with the password {password}")
