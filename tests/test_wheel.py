"""The built wheel works on its own: installed (not editable) in a fresh venv, run outside the
checkout, it migrates, imports a release and renders it from the email templates it ships."""

from __future__ import annotations

import email
import email.policy
import html
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, SAMPLES

# Never copied into the build tree: environments, caches and build output of the checkout.
_NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__",
                                      ".*_cache", ".hypothesis", "test-artifacts", "instance", "bench")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    site_packages: Path
    workdir: Path  # outside the checkout
    env: dict[str, str]

    def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        done = subprocess.run(args, cwd=self.workdir, env=self.env, capture_output=True, timeout=60)
        assert done.returncode == 0, (args, done.stdout.decode(errors="replace"),
                                      done.stderr.decode(errors="replace"))
        return done

    def communique(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return self.run(str(self.venv / "bin" / "communique"), *args)


def _run(args: list[str], cwd: Path, timeout: int) -> None:
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (args, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    base = tmp_path_factory.mktemp("wheel")
    # Build from a copy: the build writes build/ and *.egg-info next to the sources, not in the repo.
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCES, symlinks=True)
    dist = base / "dist"
    # As `pip install .` does: an isolated build with the setuptools pyproject.toml asks for.
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist),
          str(source)], cwd=base, timeout=300)
    [wheel] = dist.glob("communique-*.whl")

    # A fresh venv that gets the dependencies from this one through a .pth line (its .pth files,
    # such as the editable install's finder, are not run from there), and the wheel from pip.
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=base, timeout=60)
    python = venv / "bin" / "python"
    site_packages = Path(subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    ours = sysconfig.get_paths()
    (site_packages / "communique-dependencies.pth").write_text(
        "\n".join(dict.fromkeys([ours["purelib"], ours["platlib"]])) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps",
          str(wheel)], cwd=base, timeout=120)

    workdir = base / "run"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMMUNIQUE_", "PYTHON"))}
    env.update(COMMUNIQUE_INSTANCE_PATH=str(workdir / "instance"),
               COMMUNIQUE_DATABASE_URL=f"sqlite:///{workdir / 'instance' / 'communique.db'}")
    yield Installed(wheel, venv, site_packages, workdir, env)


@pytest.mark.slow
@pytest.mark.sqlite_only
def test_wheel_ships_the_email_templates_and_sample_lists(installed: Installed) -> None:
    """The wheel carries templates/email/ and contacts/ as package data, built from their one source."""
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for template in (ROOT / "templates" / "email").iterdir():
        assert f"service/email_templates/{template.name}" in names
    for sample in (ROOT / "contacts").glob("*.csv"):
        assert f"service/demo/contacts/{sample.name}" in names
    assert {"service/migrations/env.py", "service/templates/base.html"} <= names
    assert not [name for name in names if name.startswith("templates/")]  # nothing at the top level


@pytest.mark.slow
@pytest.mark.sqlite_only
def test_installed_wheel_imports_a_release_and_previews_it_as_eml(installed: Installed) -> None:
    """From a directory outside the checkout, the installed wheel's `communique init`,
    `releases import` and `preview --format eml` give an email whose text and HTML parts are
    rendered from the templates the wheel ships; `serve --demo` finds its shipped samples."""
    where = json.loads(installed.run(str(installed.venv / "bin" / "python"), "-c", (
        "import json, service\n"
        "from service.rendering.email_templates import TEMPLATES\n"
        "from service.cli.serve import _demo_contact_files, _demo_release_files\n"
        "print(json.dumps({'service': service.__file__, 'templates': str(TEMPLATES),\n"
        "                  'lists': [str(p) for p in _demo_contact_files()[0]],\n"
        "                  'releases': [str(p) for p in _demo_release_files()]}))")).stdout)
    inside = installed.site_packages / "service"
    assert Path(where["service"]).is_relative_to(inside), where  # the wheel's code, not the checkout's
    assert Path(where["templates"]) == inside / "email_templates"
    demo = inside / "demo"
    assert where["lists"] and all(Path(p).is_relative_to(demo / "contacts") for p in where["lists"])
    assert where["releases"] and all(Path(p).is_relative_to(demo / "releases") for p in where["releases"])

    assert b"database ready" in installed.communique("init").stdout
    sample = sorted(SAMPLES.glob("*.md"))[0]
    release = json.loads(installed.communique("releases", "import", str(sample), "--json").stdout)
    eml = installed.communique("preview", str(release["id"]), "--contact", "redaction@journal.example",
                               "--format", "eml").stdout

    message = email.message_from_bytes(eml, policy=email.policy.default)
    assert message.get_content_type() == "multipart/alternative"
    assert "redaction@journal.example" in str(message["To"])
    text_part, html_part = message.get_body(("plain",)), message.get_body(("html",))
    assert text_part is not None and html_part is not None
    plain = text_part.get_content().replace("\r\n", "\n")
    markup = html.unescape(html_part.get_content())
    title = release["title"]
    assert title[:30] in plain and "\n-- \n" in plain  # release.txt: the title, the signature
    assert title[:20] in markup and 'role="presentation"' in markup  # base.html's layout tables
