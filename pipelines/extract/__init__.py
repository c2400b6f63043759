"""Bytes → readable text (+ title), one small function per format, dispatched by file suffix."""

import codecs
import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import charset_normalizer

WESTERN = ("cp1252", "latin_1", "iso8859_15")
BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"),  # UTF-32 LE starts like UTF-16 LE
        (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))


class ExtractionError(ValueError):
    """The document cannot be turned into text; the message says why."""


@dataclass(frozen=True)
class Extracted:
    text: str
    title: str | None = None


def extract(data: bytes, suffix: str) -> Extracted:
    """Extract text from `data` given its file suffix (".md", ".pdf", ...)."""
    handler = EXTRACTORS.get(suffix.lower())
    if handler is None:
        raise ExtractionError(f"unsupported file type {suffix!r} (supported: {', '.join(sorted(EXTRACTORS))})")
    result = handler(data)
    text = clean_text(result.text)
    if not text.strip():
        raise ExtractionError("document has no extractable text")
    return Extracted(text, (clean_text(result.title).strip() or None) if result.title else None)


def clean_text(text: str) -> str:
    """Remove NUL bytes (PostgreSQL rejects them) and normalise line endings."""
    return text.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")


def decode_text(data: bytes) -> str:
    """Decode bytes that should be text: UTF-8 first, then a detected encoding; refuse binary data."""
    for bom, codec in BOMS:  # UTF-16/32 text is full of NUL bytes: its byte order mark says what it is
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(codec)
            except UnicodeDecodeError:
                raise ExtractionError(f"starts with a {codec} byte order mark but is not valid {codec}") from None
    sample = data[:65536]
    if sample.count(0) > len(sample) // 100 + 1:
        raise ExtractionError("binary data, not text (contains many NUL bytes)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    matches = list(charset_normalizer.from_bytes(data))
    if not matches or matches[0].chaos > 0.3:
        raise ExtractionError("not valid UTF-8 and no text encoding could be detected (binary data?)")
    # Ties are common on short texts (cp1250 vs cp1252 read é the same); prefer the common Western one.
    tied = [m for m in matches if (m.chaos, m.coherence) == (matches[0].chaos, matches[0].coherence)]
    return str(next((m for m in tied if m.encoding in WESTERN), matches[0]))


def _plain(data: bytes) -> Extracted:
    text = decode_text(data)
    first = next((line.strip() for line in text.splitlines() if line.strip()), None)
    return Extracted(text, first[:200] if first else None)


def _markdown(data: bytes) -> Extracted:
    text = decode_text(data)
    match = re.search(r"^#[ \t]+(.+)$", text, re.MULTILINE)
    return Extracted(text, match.group(1).strip() if match else None)


def _html(data: bytes) -> Extracted:
    import trafilatura

    html = decode_text(data)
    text = trafilatura.extract(html, output_format="markdown", include_comments=False,
                               include_tables=True, favor_recall=True)
    if not text:
        text = trafilatura.html2txt(html)
    meta = trafilatura.extract_metadata(html)
    return Extracted(text or "", meta.title if meta else None)


def _pdf(data: bytes) -> Extracted:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise ExtractionError("encrypted PDF (needs a password)")
        text = "\n\n".join(page.extract_text() or "" for page in reader.pages)
        title = reader.metadata.title if reader.metadata else None
    except ExtractionError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise ExtractionError(f"corrupt PDF: {exc}") from exc
    return Extracted(text, title)


def _docx(data: bytes) -> Extracted:
    import zipfile

    import docx

    try:
        _check_zip(zipfile.ZipFile(io.BytesIO(data)))
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ExtractionError(f"corrupt DOCX: {exc}") from exc
    lines = []
    for para in document.paragraphs:
        style = para.style.name if para.style is not None else ""
        level = re.match(r"Heading (\d)", style or "")
        lines.append(("#" * int(level.group(1)) + " " if level else "") + para.text)
    for table in document.tables:
        for row in table.rows:
            lines.append(" | ".join(cell.text for cell in row.cells))
    title = document.core_properties.title or next((line[2:] for line in lines if line.startswith("# ")), None)
    return Extracted("\n\n".join(line for line in lines if line.strip()), title)


MAX_UNZIPPED_BYTES = 200 * 1024 * 1024
MAX_ZIP_RATIO = 200


def _check_zip(archive: "zipfile.ZipFile") -> None:  # noqa: F821
    """Refuse archives that would inflate beyond a bound (zip bombs) before anything is unpacked."""
    total = sum(info.file_size for info in archive.infolist())
    packed = sum(info.compress_size for info in archive.infolist()) or 1
    if total > MAX_UNZIPPED_BYTES or total / packed > MAX_ZIP_RATIO:
        raise ExtractionError(f"archive would unpack to {total} bytes ({total // packed}x its size): "
                              "refused as a possible zip bomb")


EXTRACTORS: dict[str, Callable[[bytes], Extracted]] = {
    ".txt": _plain, ".text": _plain, ".md": _markdown, ".markdown": _markdown,
    ".html": _html, ".htm": _html, ".pdf": _pdf, ".docx": _docx,
}
