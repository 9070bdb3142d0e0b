"""The second study's corpus: passages cut on paragraph boundaries, and documents per sequence."""

import gzip
import json

import numpy as np
import pytest

from lory_lightning.replication.passages import (cut_passages, documents_per_sequence,
                                                 prepared_documents_per_sequence, write_passage_corpus)


def test_passages_fill_with_whole_paragraphs_up_to_the_limit():
    text = "aaaa\n\nbbbb\n\ncccccc\n\n\n\ndd"
    assert cut_passages(text, 10) == ["aaaa\n\nbbbb", "cccccc\n\ndd"]
    assert cut_passages(text, 1000) == ["aaaa\n\nbbbb\n\ncccccc\n\ndd"]


def test_a_long_paragraph_is_cut_at_lines_then_at_spaces_and_nothing_is_lost():
    text = "short\n\n" + "line one here\nline two is a bit longer than ten\nx" + "\n\n" + "y" * 25
    out = cut_passages(text, 12)
    assert all(len(p) <= 12 for p in out)
    assert "".join(out).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")
    assert out == ["short", "line one", "here", "line two is", "a bit longer", "than ten\n\nx", "y" * 12, "y" * 12, "y"]
    with pytest.raises(ValueError, match="max_chars must be >= 1"):
        cut_passages(text, 0)


def test_the_corpus_is_rewritten_record_by_record_and_reproducibly(tmp_path):
    src = tmp_path / "books-train.jsonl.gz"
    records = [{"text": "p1\n\np2 is longer", "domain": "books", "source": "a.txt"}, {"text": "one", "domain": "books"}]
    with gzip.open(src, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in records))
    [out] = write_passage_corpus([str(src)], tmp_path / "cut", max_chars=8)
    rows = [json.loads(line) for line in gzip.open(out, "rt")]
    assert [r["text"] for r in rows] == ["p1", "p2 is", "longer", "one"]
    assert [r.get("source") for r in rows] == ["a.txt#p0", "a.txt#p1", "a.txt#p2", None]
    assert all(r["domain"] == "books" for r in rows)
    first, written_at = out.read_bytes(), out.stat().st_mtime_ns
    write_passage_corpus([str(src)], tmp_path / "cut", max_chars=8)
    assert out.read_bytes() == first  # same content, same bytes: the study fingerprints inputs by content
    assert out.stat().st_mtime_ns == written_at  # and not written again (a second process of the study)
    write_passage_corpus([str(src)], tmp_path / "cut", max_chars=4)
    assert out.read_bytes() != first  # other passages are written
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"txt": "no"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON object with a 'text' string"):
        write_passage_corpus([str(tmp_path / "bad.jsonl")], tmp_path / "cut", 8)


def test_documents_per_sequence_weights_each_sequence_by_its_tokens_of_the_domain():
    samples = [{"domains": np.array([0, 0, 0, 1]), "meta": {"documents": [[1, 0], [2, 0]]}},  # 2 documents
               {"domains": np.array([0, 1, 1, 1]), "meta": {"documents": [[3, 0], [4, 0], [5, 0], [6, 0]]}}]  # 4
    out = documents_per_sequence(samples, 3)
    np.testing.assert_allclose(out[:2], [(3 * 2 + 1 * 4) / 4, (1 * 2 + 3 * 4) / 4])
    assert np.isnan(out[2])  # a domain with no token


def test_documents_per_sequence_of_a_prepared_folder(small_data):
    out = prepared_documents_per_sequence(small_data)
    manifest = json.loads((small_data / "manifest.json").read_text())
    assert list(out) == manifest["domains"] and all(v >= 1 for v in out.values())
