"""File bytes → plain text for indexing: text, Markdown, HTML, JSON, source code and PDF.

A file that cannot be read raises `ParseError` with a reason a user can act on; ingestion puts
that reason in the vector-store file's `last_error` instead of crashing.
"""
from __future__ import annotations

import html
import io
import json
import re
from html.parser import HTMLParser
from pathlib import PurePath

TEXT_EXTENSIONS = {
    ".txt", ".md", ".markdown", ".rst", ".csv", ".tsv", ".log", ".tex", ".xml", ".yaml", ".yml", ".toml",
    ".ini", ".cfg", ".py", ".js", ".ts", ".tsx", ".jsx", ".java", ".c", ".h", ".cc", ".cpp", ".hpp", ".cs",
    ".go", ".rs", ".rb", ".php", ".sh", ".swift", ".kt", ".scala", ".sql", ".css", ".lua", ".r", ".pl",
}
HTML_EXTENSIONS = {".html", ".htm"}
SUPPORTED_EXTENSIONS = TEXT_EXTENSIONS | HTML_EXTENSIONS | {".json", ".pdf"}


class ParseError(ValueError):
    """The file cannot be turned into text; the message says why."""


def extract_text(filename: str, data: bytes) -> str:
    """The file's text, whitespace-tidied; raises ParseError for empty, corrupt or unknown files."""
    suffix = PurePath(filename).suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise ParseError(f"unsupported file type {suffix or '(no extension)'!r}; supported: "
                         + ", ".join(sorted(SUPPORTED_EXTENSIONS)))
    if not data:
        raise ParseError(f"{filename} is empty")
    if suffix == ".pdf":
        text = _pdf_text(filename, data)
    else:
        text = _decode(filename, data)
        if suffix in HTML_EXTENSIONS:
            text = _html_text(text)
        elif suffix == ".json":
            text = _json_text(filename, text)
    text = re.sub(r"[ \t]+\n", "\n", text.replace("\r\n", "\n"))
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    if not text:
        raise ParseError(f"{filename} has no text to index")
    return text


def _decode(filename: str, data: bytes) -> str:
    # NUL bytes or many control characters mean a binary file under a text name; refuse it rather
    # than index noise that would match every query a little
    if b"\x00" in data[:8192]:
        raise ParseError(f"{filename} looks binary (it contains NUL bytes), not text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ParseError(f"{filename} is not valid UTF-8 text (byte {exc.start}): {exc.reason}") from None
    sample = text[:8192]
    control = sum(1 for ch in sample if ord(ch) < 32 and ch not in "\n\r\t\f")
    if control > max(8, len(sample) // 100):
        raise ParseError(f"{filename} looks binary ({control} control characters in its first "
                         f"{len(sample)}), not text")
    return text


class _TextOnly(HTMLParser):
    _SKIP = {"script", "style", "noscript", "template", "head"}
    _BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
              "pre", "blockquote", "table", "ul", "ol", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self._SKIP:
            self._skipping = max(0, self._skipping - 1)
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self._skipping:
            self.parts.append(data)


def _html_text(markup: str) -> str:
    parser = _TextOnly()
    parser.feed(markup)
    parser.close()
    text = html.unescape("".join(parser.parts))
    return "\n".join(re.sub(r"\s+", " ", line).strip() for line in text.split("\n"))


def _json_text(filename: str, text: str) -> str:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParseError(f"{filename} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    # pretty-printed keeps keys next to their values, which is what BM25 and the embedder need
    return json.dumps(value, indent=1, ensure_ascii=False)


def _pdf_text(filename: str, data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise ParseError(f"{filename} is an encrypted PDF")
        pages = [page.extract_text() or "" for page in reader.pages]
    except ParseError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, IndexError, OSError) as exc:
        raise ParseError(f"{filename} is not a readable PDF: {exc}") from None
    if not any(p.strip() for p in pages):
        raise ParseError(f"{filename} has no extractable text (a scanned PDF needs OCR, which is not supported)")
    return "\n\n".join(pages)
