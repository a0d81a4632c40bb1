"""Fixtures for the receipt chain: a real Dovecot on loopback, Tesseract and the fonts receipts use."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ON_CI
from tests.fakes import receipts as samples
from tests.fakes.dovecot import Dovecot, dovecot_binary


def _need(ok: bool, what: str) -> None:
    if not ok:
        if ON_CI:
            pytest.fail(f"{what} (.ci/run installs it)")
        pytest.skip(what)


@pytest.fixture(scope="session")
def dovecot() -> Iterator[Dovecot]:
    _need(dovecot_binary() is not None, "Dovecot is not installed (apt-get install dovecot-imapd)")
    # not under pytest's 0700 temp root: Dovecot's auth and mail processes run as other users
    root = Path(tempfile.mkdtemp(prefix="lf-dovecot-"))
    root.chmod(0o755)
    server = Dovecot(root)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def ocr_ready() -> None:
    from ledgerflow.receipts.extract import ocr_languages

    _need(
        ocr_languages() == ["jpn", "tha", "eng"],
        "Tesseract with Japanese and Thai "
        "(apt-get install tesseract-ocr tesseract-ocr-jpn tesseract-ocr-tha)",
    )
    fonts = all(Path(f).exists() for f in (samples.JP_FONT, samples.TH_FONT))
    _need(fonts, f"fonts to draw test receipts (apt-get install {samples.FONT_PACKAGES})")
    _need(shutil.which("tesseract") is not None, "tesseract")


# the export's S3 (moto) and Google Drive (fake server) fixtures, for filing receipts there
from tests.export.conftest import fake_drive, moto_s3  # noqa: E402, F401
