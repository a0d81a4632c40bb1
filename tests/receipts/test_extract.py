"""Text out of receipt files with the real programs: PDFium renders scanned pages, Tesseract
reads them and photos (turned upright first); what cannot be read says exactly why."""

from __future__ import annotations

import io
from datetime import date
from decimal import Decimal

import pytest
from PIL import Image

from ledgerflow.receipts.extract import OCR_MAX_SIDE, Unreadable, extract_text, html_text
from ledgerflow.receipts.parse import read_receipt
from tests.fakes import receipts as samples

pytestmark = pytest.mark.usefixtures("ocr_ready")
DAY = date(2026, 11, 20)


def scanned_pdf(png: bytes) -> bytes:
    """A PDF whose only page is a picture of the receipt (no text layer): what a scanner makes."""
    from fpdf import FPDF

    doc = FPDF()
    doc.add_page()
    doc.image(io.BytesIO(png), x=10, y=10, w=150)
    return bytes(doc.output())


def test_a_scanned_pdf_is_rendered_and_read_by_ocr(tmp_path):
    path = tmp_path / "scan.pdf"
    path.write_bytes(scanned_pdf(samples.image(samples.thai_lines())))
    reading = read_receipt(extract_text(path, "application/pdf"), today=DAY)
    assert (reading.date, reading.total, reading.tax, reading.tax_rate) == (
        DAY,
        Decimal("535.00"),
        Decimal("35.00"),
        7,
    )


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_rotated_phone_photo_is_turned_upright_by_its_exif_orientation(tmp_path, orientation):
    upright = Image.open(io.BytesIO(samples.image(samples.thai_lines()))).convert("RGB")
    # the camera stores the pixels turned and says in EXIF how to turn them back
    stored = {3: upright.rotate(180), 6: upright.rotate(90, expand=True), 8: upright.rotate(-90, expand=True)}
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    stored[orientation].save(out, "JPEG", exif=exif.tobytes(), quality=95)
    path = tmp_path / "photo.jpg"
    path.write_bytes(out.getvalue())
    reading = read_receipt(extract_text(path, "image/jpeg"), today=DAY)
    assert (reading.total, reading.date) == (Decimal("535.00"), DAY)
    assert reading.confidence == 1.0


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"%PDF-1.4\n garbage", "malformed PDF (cannot read it"),
        (None, "malformed PDF (cannot read it"),  # a PDF cut short in transfer
        (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n", "malformed PDF"),
        ("stream", "malformed PDF (its pages have neither text nor a scanned image)"),
    ],
    ids=["garbage", "truncated", "no-pages", "damaged-content"],
)
def test_a_malformed_pdf_is_reported_as_malformed_not_as_a_scan(tmp_path, data, reason):
    whole = samples.pdf(samples.japanese_lines())
    if data is None:
        data = whole[: len(whole) // 2]
    elif data == "stream":  # the page's compressed content overwritten: pypdf reads no text
        start = whole.index(b"stream\n") + len(b"stream\n")
        data = whole[:start] + b"\0" * 40 + whole[start + 40 :]
    path = tmp_path / "bad.pdf"
    path.write_bytes(data)
    with pytest.raises(Unreadable) as caught:
        extract_text(path, "application/pdf")
    assert str(caught.value).startswith(reason) and "has no text layer" not in str(caught.value)


def test_an_image_too_large_for_tesseract_says_so(tmp_path):
    path = tmp_path / "panorama.png"
    Image.new("L", (OCR_MAX_SIDE + 1, 40), 255).save(path)
    with pytest.raises(Unreadable, match=r"too large for OCR \(32768 x 40 pixels; Tesseract reads at most"):
        extract_text(path, "image/png")


def test_html_mail_text_keeps_rows_on_their_lines():
    markup = (
        "<html><head><style>td{color:red}</style></head><body><h1>Cafe Tokyo</h1>"
        "<table><tr><td>日付</td><td>2026年11月20日</td></tr><tr><td>合計</td><td>&yen;1,100</td></tr>"
        "</table><script>var total = 9;</script></body></html>"
    )
    assert html_text(markup) == "Cafe Tokyo\n日付 2026年11月20日\n合計 ¥1,100"
