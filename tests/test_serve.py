"""`communique serve --demo` as the README runs it: a real subprocess on a free port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.parse import urlencode

import pytest
from smtp_server import free_port

ROOT = Path(__file__).resolve().parent.parent
COMMUNIQUE = Path(sys.executable).parent / "communique"


@pytest.mark.sqlite_only
@pytest.mark.slow
def test_serve_demo_loads_samples_and_answers(tmp_path: Path) -> None:
    """`serve --demo` migrates, loads the sample lists and releases, prints a demo login that works,
    shows the Outbox, and stops cleanly on SIGTERM."""
    port, smtp_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMMUNIQUE_")}
    env.update(COMMUNIQUE_INSTANCE_PATH=str(tmp_path / "instance"),
               COMMUNIQUE_DATABASE_URL=f"sqlite:///{tmp_path / 'instance' / 'communique.db'}",
               COMMUNIQUE_SMTP_PORT=str(smtp_port), COMMUNIQUE_BASE_URL=f"http://127.0.0.1:{port}")
    process = subprocess.Popen([str(COMMUNIQUE), "serve", "--demo", "--port", str(port)], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    try:
        deadline = time.monotonic() + 60
        assert process.stdout is not None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            output.append(line)
            if "is running at" in line:
                break
        text = "".join(output)
        assert "is running at" in text, text
        assert "demo: list presse-nationale" in text and "demo: release" in text
        login = re.search(r"sign in as (\S+) with the password (\S+)", text)
        assert login, text
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        page = opener.open(f"http://127.0.0.1:{port}/login", timeout=10).read().decode()
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        data = urlencode({"email": login.group(1), "password": login.group(2), "csrf_token": token})
        dashboard = opener.open(f"http://127.0.0.1:{port}/login", data=data.encode(),
                                timeout=10).read().decode()
        assert "Tableau de bord" in dashboard and "Boîte d’envoi" in dashboard
        releases = opener.open(f"http://127.0.0.1:{port}/releases", timeout=10).read().decode()
        assert "task force" in releases
        assert opener.open(f"http://127.0.0.1:{port}/outbox", timeout=10).status == 200
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            rest, _ = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            rest, _ = process.communicate(timeout=10)
    assert process.returncode == 0, "".join(output) + (rest or "")
    assert "stopped" in (rest or "")
