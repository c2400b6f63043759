import io

import docx
import pytest
from pypdf import PdfReader, PdfWriter

from pipelines.extract import ExtractionError, extract
from tests.conftest import CORPUS


def corpus_file(suffix: str):
    return next(p for p in sorted(CORPUS.rglob(f"*{suffix}")))


def test_markdown_keeps_headings_and_title():
    out = extract(corpus_file(".md").read_bytes(), ".md")
    assert out.title and out.text.startswith("# ")
    assert "## Background" in out.text


def test_html_gives_readable_text_without_scripts_or_navigation():
    path = CORPUS / "coffee" / "coffee-tea-and-mortality.html"
    out = extract(path.read_bytes(), ".html")
    assert out.title == "Coffee, tea, and mortality."
    assert "liver cirrhosis" in out.text
    for junk in ("tracking", "should never be indexed", "font-family", "Log in", "<p>", "<h2>"):
        assert junk not in out.text


def test_pdf_text_and_title():
    out = extract((CORPUS / "olive-oil" / "olive-oil-intake-and-risk-of-cardiovascular-disease-and-mort.pdf")
                  .read_bytes(), ".pdf")
    assert out.title and out.title.startswith("Olive oil intake")
    assert "olive oil" in out.text.lower() and len(out.text) > 800


def test_docx_headings_become_markdown_headings():
    out = extract(corpus_file(".docx").read_bytes(), ".docx")
    assert out.text.startswith("# ")
    assert "## Background" in out.text and "## Findings" in out.text


def test_plain_text_in_latin1_is_detected_not_mangled():
    text = "Café crème brûlée: naïve façade, über straße. " * 20
    out = extract(text.encode("latin-1"), ".txt")
    assert "Café crème brûlée" in out.text


def test_nul_bytes_are_removed():
    out = extract(b"hello\x00 world, a normal sentence.", ".txt")
    assert out.text == "hello world, a normal sentence."


@pytest.mark.parametrize("data,suffix,reason", [
    (bytes(range(256)) * 64, ".txt", "binary"),
    (b"\x89PNG\r\n\x1a\n" + bytes(4000), ".md", "binary"),
    (b"", ".txt", "no extractable text"),
    (b"   \n\t  \n", ".md", "no extractable text"),
    (b"%PDF-1.4 garbage that is not a pdf", ".pdf", "corrupt PDF"),
    (b"PK\x03\x04 not a real zip", ".docx", "corrupt DOCX"),
    (b"data", ".exe", "unsupported file type"),
])
def test_bad_input_raises_a_clear_error(data, suffix, reason):
    with pytest.raises(ExtractionError, match=reason):
        extract(data, suffix)


def test_truncated_pdf_is_an_extraction_error():
    data = corpus_file(".pdf").read_bytes()
    with pytest.raises(ExtractionError):
        extract(data[: len(data) // 3], ".pdf")


def test_encrypted_pdf_is_refused_with_reason():
    writer = PdfWriter(clone_from=PdfReader(corpus_file(".pdf")))
    writer.encrypt("secret-password")
    buf = io.BytesIO()
    writer.write(buf)
    with pytest.raises(ExtractionError, match="encrypted"):
        extract(buf.getvalue(), ".pdf")


def test_docx_tables_are_included():
    d = docx.Document()
    d.add_paragraph("Prices below.")
    table = d.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "Widget", "42 EUR"
    buf = io.BytesIO()
    d.save(buf)
    assert "Widget | 42 EUR" in extract(buf.getvalue(), ".docx").text


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be", "utf-32"])
def test_utf16_and_utf32_text_with_a_byte_order_mark_is_read(codec):
    """Defect: the NUL-byte check ran before BOM detection and refused UTF-16 text as binary."""
    import codecs

    text = "# Café notes\n\nÜber naïve façades — 東京.\n"
    data = text.encode(codec)
    if codec == "utf-16-be":
        data = codecs.BOM_UTF16_BE + data
    result = extract(data, ".md")
    assert result.text == text and result.title == "Café notes"
