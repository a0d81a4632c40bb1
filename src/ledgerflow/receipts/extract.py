"""Text out of a receipt file: a PDF's text layer (pypdf), images through Tesseract OCR."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

#: Attachments taken from mail, by content type, with the extension they are stored under.
ACCEPTED = {"application/pdf": "pdf", "image/jpeg": "jpg", "image/png": "png"}
OCR_LANGUAGES = ("jpn", "tha", "eng")
_INSTALL = "apt-get install tesseract-ocr tesseract-ocr-jpn tesseract-ocr-tha"


class Unreadable(Exception):
    """The file's text cannot be read; the message says why (it goes to the review list)."""


def sniff(data: bytes) -> str | None:
    """The content type from the file's first bytes (mail clients mislabel attachments)."""
    if data.startswith(b"%PDF-"):
        return "application/pdf"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    return None


def extract_text(path: Path, content_type: str, timeout: float = 120.0) -> str:
    """The receipt's text; raises `Unreadable` with a reason a person can act on."""
    if content_type == "application/pdf":
        return _pdf_text(path)
    if content_type in ("image/jpeg", "image/png"):
        return _ocr(path, timeout)
    raise Unreadable(f"unsupported file type {content_type}")


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(path, strict=False)
        text = "\n".join((page.extract_text() or "") for page in reader.pages[:10])
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise Unreadable(f"cannot read the PDF: {type(exc).__name__}: {exc}") from None
    if not text.strip():
        raise Unreadable("the PDF has no text layer (a scanned image): mail it as JPEG or PNG to OCR it")
    return text


def ocr_languages() -> list[str]:
    """Tesseract's installed languages among those receipts need; [] when Tesseract is missing."""
    if shutil.which("tesseract") is None:
        return []
    done = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True, check=False)
    installed = set(done.stdout.split())
    return [lang for lang in OCR_LANGUAGES if lang in installed]


def _ocr(path: Path, timeout: float) -> str:
    languages = ocr_languages()
    if not languages:
        raise Unreadable(f"OCR unavailable: Tesseract is not installed ({_INSTALL})")
    args = ["tesseract", str(path), "-", "-l", "+".join(languages)]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise Unreadable(f"OCR took longer than {timeout:.0f} s") from None
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise Unreadable(f"cannot read the image: {lines[-1] if lines else 'tesseract failed'}")
    if not done.stdout.strip():
        raise Unreadable("no text found in the image")
    return done.stdout
