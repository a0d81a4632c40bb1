"""Text out of a receipt file: a PDF's text layer (pypdf, then PDFium), scanned PDF pages and
images through Tesseract OCR (upright first: a phone photo's EXIF orientation is applied), and
the text of HTML or plain-text mail."""

from __future__ import annotations

import html.parser
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

#: Attachments taken from mail, by content type, with the extension they are stored under.
ACCEPTED = {"application/pdf": "pdf", "image/jpeg": "jpg", "image/png": "png"}
#: A message's own text, kept as a receipt when it reads as one (HTML and forwarded receipts).
MESSAGE_TEXT = {"text/html": "html", "text/plain": "txt"}
OCR_LANGUAGES = ("jpn", "tha", "eng")
#: Tesseract refuses images with a side longer than this ("Image too large").
OCR_MAX_SIDE = 32767
PDF_PAGES = 10
PDF_DPI = 300
_INSTALL = "apt-get install tesseract-ocr tesseract-ocr-jpn tesseract-ocr-tha"
_PDFIUM = threading.Lock()  # PDFium is not thread-safe; workers run tasks in threads


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
        return _pdf_text(path, timeout)
    if content_type in ("image/jpeg", "image/png"):
        return _ocr_image(path, timeout)
    if content_type in MESSAGE_TEXT:
        text = path.read_bytes().decode("utf-8", errors="replace")
        return html_text(text) if content_type == "text/html" else text
    raise Unreadable(f"unsupported file type {content_type}")


def _pdf_text(path: Path, timeout: float) -> str:
    """The text layer; a PDF without one (a scan) has its pages rendered and OCR'd."""
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    problem = None
    try:
        reader = PdfReader(path, strict=False)
        text = "\n".join((page.extract_text() or "") for page in reader.pages[:PDF_PAGES])
        if text.strip():
            return text
    except (PyPdfError, ValueError, KeyError, TypeError, OSError, RecursionError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    return _pdfium_text(path, timeout, problem)


def _pdfium_text(path: Path, timeout: float, pypdf_problem: str | None) -> str:
    import pypdfium2 as pdfium

    with tempfile.TemporaryDirectory(prefix="lf-ocr-") as tmp:
        pages: list[Path] = []
        with _PDFIUM:
            try:
                doc = pdfium.PdfDocument(path)
            except pdfium.PdfiumError as exc:
                why = pypdf_problem or str(exc)
                raise Unreadable(f"malformed PDF (cannot read it: {why})") from None
            try:
                if len(doc) == 0:
                    raise Unreadable("malformed PDF (it has no pages)")
                text, images = [], 0
                for index in range(min(len(doc), PDF_PAGES)):
                    page = doc[index]
                    text.append(page.get_textpage().get_text_range())
                    images += sum(1 for _ in page.get_objects(filter=(pdfium.raw.FPDF_PAGEOBJ_IMAGE,)))
                if "".join(text).strip():
                    return "\n".join(text)
                if images == 0:
                    raise Unreadable("malformed PDF (its pages have neither text nor a scanned image)")
                for index in range(min(len(doc), PDF_PAGES)):
                    target = Path(tmp) / f"page{index + 1}.png"
                    doc[index].render(scale=PDF_DPI / 72).to_pil().save(target)
                    pages.append(target)
            finally:
                doc.close()
        read = [_ocr(page, timeout, optional=len(pages) > 1) for page in pages]
        if not "".join(read).strip():
            raise Unreadable(f"a scanned PDF: no text found by OCR in its {len(pages)} page(s)")
        return "\n".join(read)


def html_text(markup: str) -> str:
    """The visible text of an HTML mail, one line per block or table row."""
    parser = _TextParser()
    parser.feed(markup)
    parser.close()
    lines = ("".join(line).strip() for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


class _TextParser(html.parser.HTMLParser):
    BREAKS = {"br", "p", "div", "tr", "li", "table", "h1", "h2", "h3", "h4", "h5", "h6", "section"}
    HIDDEN = {"script", "style", "head", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in self.HIDDEN:
            self.hidden += 1
        elif tag in self.BREAKS:
            self.parts.append("\n")
        elif tag in ("td", "th"):
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden = max(0, self.hidden - 1)
        elif tag in self.BREAKS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(" ".join(data.split()) if data.strip() else " ")


def ocr_languages() -> list[str]:
    """Tesseract's installed languages among those receipts need; [] when Tesseract is missing."""
    if shutil.which("tesseract") is None:
        return []
    done = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True, check=False)
    installed = set(done.stdout.split())
    return [lang for lang in OCR_LANGUAGES if lang in installed]


def _ocr_image(path: Path, timeout: float) -> str:
    """OCR of a photo, turned upright by its EXIF orientation first."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            width, height = img.size
            if max(width, height) > OCR_MAX_SIDE:
                raise Unreadable(_too_large(width, height))
            upright = ImageOps.exif_transpose(img)
            if upright is img:
                return _ocr(path, timeout)
            with tempfile.TemporaryDirectory(prefix="lf-ocr-") as tmp:
                turned = Path(tmp) / "upright.png"
                upright.save(turned)
                return _ocr(turned, timeout)
    except Image.DecompressionBombError:
        raise Unreadable("the image is too large for OCR (over Pillow's decompression-bomb limit)") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise Unreadable(f"cannot read the image: {exc}") from None


def _too_large(width: int, height: int) -> str:
    return (
        f"the image is too large for OCR ({width} x {height} pixels; Tesseract reads at most {OCR_MAX_SIDE})"
    )


def _ocr(path: Path, timeout: float, optional: bool = False) -> str:
    """Tesseract's text of one image; `optional`: an empty page is not an error (a blank page)."""
    languages = ocr_languages()
    if not languages:
        raise Unreadable(f"OCR unavailable: Tesseract is not installed ({_INSTALL})")
    args = ["tesseract", str(path), "-", "-l", "+".join(languages)]
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise Unreadable(f"OCR took longer than {timeout:.0f} s") from None
    if done.returncode != 0:
        lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
        large = next((ln for ln in lines if "Image too large" in ln), None)
        if large:
            raise Unreadable(f"the image is too large for OCR (Tesseract: {large})")
        useful = [ln for ln in lines if ln != "Error during processing."]
        raise Unreadable(f"cannot read the image: {(useful or lines or ['tesseract failed'])[-1]}")
    if not done.stdout.strip() and not optional:
        raise Unreadable("no text found in the image")
    return done.stdout
