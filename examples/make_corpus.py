"""Regenerate examples/corpus/ from NFCorpus abstracts (real PubMed text) in five formats.

Run once by a developer (needs fpdf2, a dev dependency); the output is committed so that
`make run` needs no data set:  python examples/make_corpus.py ../shared/data/beir/nfcorpus
"""

import json
import re
import sys
from html import escape
from pathlib import Path

import docx
from fpdf import FPDF

TOPICS = ["coffee", "nuts", "broccoli", "vitamin D", "green tea", "turmeric", "fiber", "sleep",
          "exercise", "red meat", "berries", "soy", "salt", "olive oil", "garlic"]
RECORD_TOPICS = ["flax", "mushroom", "eggs", "milk", "sugar"]
FORMATS = ["md", "html", "pdf", "docx", "txt"]
OUT = Path(__file__).parent / "corpus"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def sections(text: str) -> list[tuple[str, str]]:
    """Split an abstract into two headed sections at a sentence boundary near the middle."""
    sentences = re.split(r"(?<=[.!?])\s+", text)
    half = max(1, len(sentences) // 2)
    return [("Background", " ".join(sentences[:half])), ("Findings", " ".join(sentences[half:]))]


def write_md(path: Path, doc: dict) -> None:
    body = "\n\n".join(f"## {h}\n\n{t}" for h, t in sections(doc["text"]))
    path.write_text(f"# {doc['title']}\n\nSource: {doc['metadata'].get('url', '')}\n\n{body}\n")


def write_html(path: Path, doc: dict) -> None:
    body = "".join(f"<h2>{escape(h)}</h2><p>{escape(t)}</p>" for h, t in sections(doc["text"]))
    path.write_text(
        "<!doctype html><html><head><title>" + escape(doc["title"]) + "</title>"
        "<script>var tracking = 'should never be indexed';</script>"
        "<style>body { font-family: serif }</style></head><body>"
        "<nav><a href='/'>Home</a> | <a href='/about'>About</a> | <a href='/login'>Log in</a></nav>"
        f"<article><h1>{escape(doc['title'])}</h1>{body}</article>"
        "<footer>Copyright Nutrition Library. All rights reserved.</footer></body></html>\n"
    )


def write_pdf(path: Path, doc: dict) -> None:
    pdf = FPDF()
    pdf.set_title(doc["title"])
    pdf.add_page()
    pdf.set_font("Helvetica", size=14)
    latin = lambda s: s.encode("latin-1", "replace").decode("latin-1")  # noqa: E731 core fonts
    pdf.multi_cell(0, 8, latin(doc["title"]), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=11)
    for heading, text in sections(doc["text"]):
        pdf.ln(4)
        pdf.multi_cell(0, 6, latin(heading), new_x="LMARGIN", new_y="NEXT")
        pdf.multi_cell(0, 6, latin(text), new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(path))


def write_docx(path: Path, doc: dict) -> None:
    d = docx.Document()
    d.core_properties.title = doc["title"]
    d.add_heading(doc["title"], level=1)
    for heading, text in sections(doc["text"]):
        d.add_heading(heading, level=2)
        d.add_paragraph(text)
    d.save(str(path))


def write_txt(path: Path, doc: dict) -> None:
    path.write_text(doc["title"] + "\n\n" + "\n\n".join(t for _, t in sections(doc["text"])) + "\n")


def main(nfcorpus: Path) -> None:
    docs = [json.loads(line) for line in (nfcorpus / "corpus.jsonl").open()]
    writers = {"md": write_md, "html": write_html, "pdf": write_pdf, "docx": write_docx, "txt": write_txt}
    OUT.mkdir(exist_ok=True)
    i = 0
    for topic in TOPICS:
        picked = [d for d in docs if topic.lower() in d["title"].lower() and len(d["text"]) > 900][:2]
        for doc in picked:
            fmt = FORMATS[i % len(FORMATS)]
            folder = OUT / slug(topic)
            folder.mkdir(exist_ok=True)
            writers[fmt](folder / f"{slug(doc['title'])}.{fmt}", doc)
            i += 1
    records = []
    for topic in RECORD_TOPICS:
        for doc in [d for d in docs if topic.lower() in d["title"].lower()][:4]:
            records.append({"id": doc["_id"], "title": doc["title"], "text": doc["text"],
                            "topic": topic, "url": doc["metadata"].get("url", "")})
    (OUT / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"wrote {i} documents to {OUT} and {len(records)} records")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
