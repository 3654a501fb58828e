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
