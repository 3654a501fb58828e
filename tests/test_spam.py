"""SpamAssassin (local rules only, no network tests) scores each sample email below 1.0."""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import SAMPLES
from sqlalchemy.orm import Session

from service.config import Settings
from service.releases import store as releases
from service.rendering.prepare import Recipient, new_message_id, prepare_release

SPAMASSASSIN = "/usr/bin/spamassassin"
NOW = datetime(2022, 7, 5, 8, 0, tzinfo=UTC)


def spam_report(raw: bytes) -> tuple[float, list[str], str]:
    """(score, rules that fired, the full report) from `spamassassin -t -L`."""
    result = subprocess.run([SPAMASSASSIN, "-t", "-L"], input=raw, capture_output=True,
                            timeout=180, check=False)
    output = result.stdout.decode("utf-8", "replace")
    status = re.search(r"^X-Spam-Status: \w+, score=(-?[\d.]+)[^\n]*(?:\n\s+[^\n]*)*", output, re.M)
    assert status, result.stderr.decode("utf-8", "replace")[-2000:]
    tests = re.search(r"tests=(.*?)(?:autolearn|version)=", status.group(0), re.S)
    rules = [r.strip() for r in (tests.group(1) if tests else "").replace("\n", "").split(",")
             if r.strip()]
    return float(status.group(1)), rules, output


@pytest.mark.slow
@pytest.mark.sqlite_only
@pytest.mark.skipif(not shutil.which(SPAMASSASSIN), reason="spamassassin is not installed")
@pytest.mark.parametrize("sample", sorted(p.name for p in SAMPLES.glob("*.md")))
def test_sample_scores_below_one(sample: str, db: Session, settings: Settings,
                                 artifacts: Path) -> None:
    """Each sample release, as a journalist receives it, scores below 1.0 with SpamAssassin."""
    text = (SAMPLES / sample).read_text(encoding="utf-8")
    release = releases.create_release(db, settings, body=text, now=NOW)
    db.commit()
    recipient = Recipient(email="elodie.martin@lemonde.fr", contact_id=1, civility="Mme",
                          first_name="Élodie", last_name="Martin", language="fr")
    raw = prepare_release(db, release.id, settings).render_bytes(
        recipient, message_id=new_message_id(settings), now=NOW, blast_id=1)
    score, rules, report = spam_report(raw)
    name = Path(sample).stem
    (artifacts / f"spamassassin-{name}.txt").write_text(report, encoding="utf-8")
    print(f"{name}: score {score}, rules {', '.join(rules)}")
    assert score < 1.0, rules
