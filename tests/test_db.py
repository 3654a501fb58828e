"""Schema: `communique init` creates or upgrades it, idempotently, and matches models.py."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service.cli import main
from service.db import Base, current_revision, head_revision, make_engine


def test_init_is_idempotent_and_migrations_match_models(runner, settings):
    """Running init twice leaves the schema at head, identical to the models, on both databases."""
    for _ in range(2):
        result = runner.invoke(main, ["init"])
        assert result.exit_code == 0, result.output
        assert "database ready" in result.output
    engine = make_engine(settings.database_url)
    try:
        assert current_revision(engine) == head_revision()
        assert "queued_messages" in inspect(engine).get_table_names()
        with engine.connect() as connection:
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == [], f"models.py and the migrations differ: {diff}"
    finally:
        engine.dispose()


def test_a_worker_on_a_database_never_initialised_says_run_init(settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`communique worker` against an empty database stops at once with what to do, instead of
    retrying its first claim forever; the database is left as it was."""
    import dataclasses
    import sqlite3

    from click.testing import CliRunner
    from conftest import settings_environ

    empty = dataclasses.replace(settings, database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    result = CliRunner(env=settings_environ(empty)).invoke(main, ["worker", "--until-idle"])
    assert result.exit_code == 1
    assert "has no Communiqué tables: run `communique init` first" in result.output
    with sqlite3.connect(tmp_path / "empty.db") as connection:
        assert connection.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)
