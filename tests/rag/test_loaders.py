"""Loaders on files the tests make: Markdown, text, a real PDF and DOCX, HTML, JSONL; broken and odd inputs."""

from __future__ import annotations

import pytest

from puyu.errors import ConfigError
from puyu.rag.loaders import LoaderError, discover, load_file


def make_pdf(path, pages):
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    pdf.output(str(path))
    return path


def make_docx(path):
    import docx

    document = docx.Document()
    document.add_heading("Installation", level=1)
    document.add_paragraph("Run pip install puyu to install it.")
    document.add_heading("GPU support", level=2)
    document.add_paragraph("CUDA is used when present.")
    table = document.add_table(rows=1, cols=2)
    table.rows[0].cells[0].text, table.rows[0].cells[1].text = "flag", "meaning"
    document.save(str(path))
    return path


def test_markdown_and_text_keep_file_lines(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\nSome text.\n")
    (tmp_path / "b.txt").write_text("plain words\n")
    [md] = load_file(tmp_path / "a.md")
    [txt] = load_file(tmp_path / "b.txt")
    assert md.markdown and md.first_line == 1 and md.text == "# Title\n\nSome text.\n"
    assert not txt.markdown and txt.text == "plain words\n" and txt.source == str(tmp_path / "b.txt")


def test_pdf_gives_one_document_per_page(tmp_path):
    docs = load_file(make_pdf(tmp_path / "r.pdf", ["The first page talks about llamas.", "The second page is about alpacas."]))
    assert [d.page for d in docs] == [1, 2]
    assert "llamas" in docs[0].text and "alpacas" in docs[1].text and docs[0].first_line is None


def test_docx_headings_become_markdown(tmp_path):
    [doc] = load_file(make_docx(tmp_path / "guide.docx"))
    assert doc.markdown
    assert "# Installation" in doc.text and "## GPU support" in doc.text and "flag | meaning" in doc.text
    assert doc.text.index("# Installation") < doc.text.index("Run pip install") < doc.text.index("## GPU support")


def test_html_main_text_without_markup(tmp_path):
    html = ("<html><head><title>T</title><script>var x = 1;</script></head><body><nav>Home | About</nav>"
            "<article><h1>Serving</h1><p>The server listens on port 23333 and speaks the OpenAI protocol. "
            "Start it with one command and point any client at it.</p></article></body></html>")
    (tmp_path / "page.html").write_text(html)
    [doc] = load_file(tmp_path / "page.html")
    assert "port 23333" in doc.text and "<p>" not in doc.text and "var x" not in doc.text


def test_jsonl_records_keep_their_ids(tmp_path):
    (tmp_path / "p.jsonl").write_text('{"id": "p1", "text": "one"}\n\n{"id": "p2", "text": "two"}\n')
    docs = load_file(tmp_path / "p.jsonl")
    assert [(d.record_id, d.text) for d in docs] == [("p1", "one"), ("p2", "two")]
    (tmp_path / "bad.jsonl").write_text('{"id": "p1", "text": "one"}\n{"text": "no id"}\n')
    with pytest.raises(LoaderError, match=r"bad.jsonl:2"):
        load_file(tmp_path / "bad.jsonl")


def test_corrupt_pdf_raises_an_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage without xref")
    with pytest.raises(LoaderError, match="broken.pdf"):
        load_file(path)


def test_non_utf8_text_is_decoded(tmp_path):
    path = tmp_path / "legacy.txt"
    path.write_bytes("Der Bär läuft über die Straße, und das Mädchen grüßt ihn freundlich.".encode("cp1252"))
    [doc] = load_file(path)
    assert "Bär" in doc.text and "Straße" in doc.text


def test_empty_file_loads_as_empty_text(tmp_path):
    (tmp_path / "empty.md").write_bytes(b"")
    assert [d.text for d in load_file(tmp_path / "empty.md")] == [""]


def test_discover_walks_folders_with_globs(tmp_path):
    for name in ["en/a.md", "en/b.txt", "zh/c.md", ".git/d.md", "img.png", "en/deep/e.md"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    names = lambda found: sorted(p.relative_to(tmp_path).as_posix() for p in found)  # noqa: E731
    assert names(discover([tmp_path])) == ["en/a.md", "en/b.txt", "en/deep/e.md", "zh/c.md"]
    assert names(discover([tmp_path], include=["*.md"], exclude=["zh/*"])) == ["en/a.md", "en/deep/e.md"]
    assert names(discover([tmp_path / "en" / "b.txt", tmp_path / "en"])) == ["en/a.md", "en/b.txt", "en/deep/e.md"]
    with pytest.raises(ConfigError, match="no such file"):
        discover([tmp_path / "missing"])
    with pytest.raises(ConfigError, match="unsupported file type"):
        discover([tmp_path / "img.png"])
