"""Receipts as shops send them: PDFs with a text layer and photographed (rendered) images,
in Japanese and Thai, attached to e-mail messages."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime

JP_FONT = "/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf"
TH_FONT = "/usr/share/fonts/truetype/tlwg/Garuda.ttf"
FONT_PACKAGES = "fonts-ipafont-gothic fonts-tlwg-garuda-ttf"


def japanese_lines(
    shop: str = "株式会社サンプル商店", day: str = "2026年11月20日", net: int = 2000
) -> list[str]:
    """A reduced-rate (8 %) Japanese receipt; the total is net + tax in yen."""
    tax = net * 8 // 100
    return [
        shop,
        day,
        f"コーヒー豆 {net:,}円",
        f"小計 ¥{net:,}",
        f"消費税(8%) ¥{tax:,}",
        f"合計 ¥{net + tax:,}",
    ]


def thai_lines(shop: str = "บริษัท ตัวอย่าง จำกัด", day: str = "20/11/2569", net: int = 500) -> list[str]:
    """A Thai receipt with 7 % VAT, dated in the Buddhist era."""
    vat = net * 7  # satang
    return [
        shop,
        f"วันที่ {day}",
        f"ค่ากาแฟ {net}.00",
        f"ภาษีมูลค่าเพิ่ม 7% {vat // 100}.{vat % 100:02d}",
        f"รวมทั้งสิ้น {net + vat // 100}.{vat % 100:02d} บาท",
    ]


def pdf(lines: list[str], font: str = JP_FONT) -> bytes:
    from fpdf import FPDF

    doc = FPDF()
    doc.add_page()
    doc.add_font("receipt", fname=font)
    doc.set_font("receipt", size=14)
    for line in lines:
        doc.cell(0, 10, line, new_x="LMARGIN", new_y="NEXT")
    return bytes(doc.output())


def image(lines: list[str], font: str = TH_FONT, kind: str = "PNG") -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    face = ImageFont.truetype(font, 40)
    img = Image.new("L", (1000, 80 * len(lines) + 80), 255)
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((40, 40 + 80 * i), line, font=face, fill=0)
    out = io.BytesIO()
    img.save(out, kind)
    return out.getvalue()


def message(
    subject: str, attachments: list[tuple[str, bytes, str]], sender: str = "shop@example.test"
) -> EmailMessage:
    """A message with (file name, bytes, MIME type) attachments."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = "books@example.test"
    msg["Subject"] = subject
    msg["Date"] = format_datetime(datetime(2026, 11, 20, 9, 30, tzinfo=UTC))
    msg["Message-ID"] = f"<{abs(hash((subject, len(attachments))))}@example.test>"
    msg.set_content("領収書を添付します / แนบใบเสร็จ")
    for name, data, mime in attachments:
        maintype, subtype = mime.split("/")
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return msg
