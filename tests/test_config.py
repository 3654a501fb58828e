"""Settings: defaults that run with nothing installed; a bad value names its variable."""

import pytest

from service.config import Settings
from service.errors import ConfigError


def test_defaults_need_nothing_installed(tmp_path):
    """With no COMMUNIQUE_* variable, the service uses SQLite under instance/ and SMTP on 1025."""
    settings = Settings.from_env({"COMMUNIQUE_INSTANCE_PATH": str(tmp_path)})
    assert settings.database_url == "sqlite:///instance/communique.db"
    assert (settings.smtp_host, settings.smtp_port) == ("127.0.0.1", 1025)
    assert settings.timezone == "Africa/Casablanca"
    assert settings.smtp_pipelining == "auto"
    assert len(settings.secret_key) >= 32
    again = Settings.from_env({"COMMUNIQUE_INSTANCE_PATH": str(tmp_path)})
    assert again.secret_key == settings.secret_key, "the development secret survives restarts"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("COMMUNIQUE_SMTP_PORT", "abc", "COMMUNIQUE_SMTP_PORT: 'abc' is not a number"),
        ("COMMUNIQUE_SMTP_PORT", "70000", "COMMUNIQUE_SMTP_PORT"),
        ("COMMUNIQUE_TIMEZONE", "Mars/Olympus", "COMMUNIQUE_TIMEZONE"),
        ("COMMUNIQUE_DATABASE_URL", "mysql://x", "COMMUNIQUE_DATABASE_URL"),
        ("COMMUNIQUE_SMTP_TLS", "maybe", "COMMUNIQUE_SMTP_TLS"),
        ("COMMUNIQUE_SMTP_PIPELINING", "on", "COMMUNIQUE_SMTP_PIPELINING: must be auto or off"),
        ("COMMUNIQUE_WEBHOOK_SECRET", "plain", "COMMUNIQUE_WEBHOOK_SECRET"),
        ("COMMUNIQUE_REQUIRE_APPROVAL", "perhaps", "COMMUNIQUE_REQUIRE_APPROVAL"),
        ("COMMUNIQUE_BASE_URL", "press.example.org", "COMMUNIQUE_BASE_URL"),
    ],
)
def test_bad_setting_names_the_variable(tmp_path, variable, value, message):
    """A bad value stops start-up with a message that names the variable."""
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({"COMMUNIQUE_INSTANCE_PATH": str(tmp_path), variable: value})


def test_smtp_pipelining_can_be_turned_off(tmp_path):
    """COMMUNIQUE_SMTP_PIPELINING=off keeps the worker on aiosmtplib's public path."""
    settings = Settings.from_env({"COMMUNIQUE_INSTANCE_PATH": str(tmp_path),
                                  "COMMUNIQUE_SMTP_PIPELINING": "off"})
    assert settings.smtp_pipelining == "off"


def test_production_requires_a_secret(tmp_path):
    """Production has no default secret key."""
    with pytest.raises(ConfigError, match="COMMUNIQUE_SECRET_KEY"):
        Settings.from_env({"COMMUNIQUE_ENV": "production",
                           "COMMUNIQUE_INSTANCE_PATH": str(tmp_path)})


def test_cli_reports_bad_setting(tmp_path):
    """`communique init` with a bad setting exits 2 and names the variable."""
    from click.testing import CliRunner

    from service.cli import main

    result = CliRunner(env={"COMMUNIQUE_SMTP_PORT": "x",
                            "COMMUNIQUE_INSTANCE_PATH": str(tmp_path)}).invoke(main, ["init"])
    assert result.exit_code == 2
    assert "COMMUNIQUE_SMTP_PORT" in result.output
