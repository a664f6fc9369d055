"""Illustrated writing (``puyu write``): captions by a vision-language model, paragraphs and placements by the writer.

Placement is checked on the built-in model with paragraphs and captions whose matches a reader sees at once; the
command runs end to end with a tiny random VLM captioning real pictures and the built-in model writing.
"""

from __future__ import annotations

import re

import pytest

from puyu.chat.illustrate import Article, place_images
from puyu.cli import main
from tests.model.vlm.conftest import make_hf_vlm, photo

PARAGRAPHS = ["Cats are small furry pets. They love to sleep on sofas and chase mice around the house.",
              "The ocean covers most of the Earth. Waves roll onto sandy beaches and fish swim in the deep blue water.",
              "Mountains rise high above the valleys. Their peaks are covered in snow during the winter."]
CAPTIONS = ["a snowy mountain peak under a blue sky", "a grey cat asleep on a sofa", "waves breaking on a sandy beach"]


def test_each_picture_goes_after_the_paragraph_its_caption_fits(builtin_llm):
    placements = place_images(builtin_llm, PARAGRAPHS, CAPTIONS)
    assert [(image, paragraph) for image, paragraph, _ in placements] == [(1, 0), (2, 1), (0, 2)]
    assert all(fit > 0 for _, _, fit in placements)
    # one picture per paragraph: two cat pictures cannot both follow the cat paragraph
    two_cats = place_images(builtin_llm, PARAGRAPHS[:1], ["a grey cat asleep on a sofa", "a kitten on a sofa"])
    assert len(two_cats) == 1


def test_markdown_links_pictures_relative_to_the_output(tmp_path):
    pictures = [tmp_path / "pics" / "cat photo.png", tmp_path / "pics" / "sea.png"]
    article = Article("Pets and seas", PARAGRAPHS[:2], pictures, ["a cat [asleep]", "the sea"], [(0, 0, 3.0)])
    text = article.markdown(relative_to=tmp_path / "out")
    assert text.startswith("# Pets and seas\n\n" + PARAGRAPHS[0] + "\n\n![a cat asleep](../pics/cat%20photo.png)\n\n")
    assert article.unplaced == [pictures[1]]


@pytest.fixture(scope="module")
def captioner(tmp_path_factory, tiny_tokenizer_dir):
    folder = tmp_path_factory.mktemp("llava")
    make_hf_vlm("llava", folder, tiny_tokenizer_dir, seed=5)
    return folder


def test_puyu_write_drafts_an_illustrated_article(captioner, tmp_path, capsys, caplog):
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for seed in range(3):
        photo(80, 60, seed=seed).save(pictures / f"photo{seed}.png")
    (pictures / "broken.jpg").write_bytes(b"not a picture")
    (pictures / "notes.txt").write_text("not a picture either")
    out = tmp_path / "article" / "seaside.md"
    code = main(["write", str(captioner), "A day at the seaside", "--images", str(pictures), "--out", str(out),
                 "--chat-template", "chatml", "--writer", "smollm2-135m-instruct", "--paragraphs", "2",
                 "--max-new-tokens", "160", "--dtype", "float32"])
    err = capsys.readouterr().err
    assert code == 0, err
    text = out.read_text()
    assert text.startswith("# A day at the seaside\n")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert all((out.parent / link).resolve().parent == pictures.resolve() for link in links)
    assert len(links) == len(set(links)) <= 2
    reported = re.findall(r"(?:placed|left out) (photo\d\.png)", err)
    assert sorted(reported) == ["photo0.png", "photo1.png", "photo2.png"]  # every readable picture is accounted for
    assert "skipped broken.jpg" in caplog.text  # a warning, not a crash


@pytest.mark.parametrize("case, expected", [
    ("missing", "is not a folder"),
    ("empty", "holds no pictures"),
    ("text-only", "reads text only"),
])
def test_puyu_write_bad_input_is_a_clear_error(case, expected, tmp_path, capsys):
    folder = tmp_path / "pictures"
    if case != "missing":
        folder.mkdir()
    if case == "text-only":
        photo(40, 40).save(folder / "a.png")
    code = main(["write", "smollm2-135m-instruct", "A topic", "--images", str(folder)])
    assert code == 2
    assert expected in capsys.readouterr().err
