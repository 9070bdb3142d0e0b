import gzip
import json

import pytest

from lory_lightning.data.sources import DataError, ReadPolicy, SkipLog, read_documents


def write_broken_fixture(path):
    lines = [
        json.dumps({"text": "a good first document about tea", "domain": "food"}).encode(),
        b'{"text": "unterminated',                                   # line 2: malformed json
        b'\xff\xfe{"text": "bad bytes"}',                              # line 3: bad utf-8
        json.dumps(["not", "an", "object"]).encode(),                  # line 4
        json.dumps({"body": "no text field here"}).encode(),           # line 5
        json.dumps({"text": "   \n  ", "domain": "food"}).encode(),     # line 6: empty
        json.dumps({"text": "short", "domain": "food"}).encode(),      # line 7: too short
        json.dumps({"text": "a good first document about tea", "domain": "food"}).encode(),  # 8: duplicate
        b"",                                                           # line 9: blank, not a document
        json.dumps({"text": "the last document, still read after all that", "domain": 3}).encode(),  # 10
        json.dumps({"text": "the very last document is read too"}).encode(),  # 11: domain from file name
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")


def test_broken_lines_are_reported_with_line_numbers_and_the_rest_is_kept(tmp_path):
    path = tmp_path / "mixed.jsonl"
    write_broken_fixture(path)
    skips = SkipLog()
    docs = list(read_documents([path], ReadPolicy(min_chars=10), skips))
    assert [d.text for d in docs] == ["a good first document about tea", "the very last document is read too"]
    assert [d.domain for d in docs] == ["food", "mixed"]
    assert docs[0].where == f"{path}:1" and docs[1].where == f"{path}:11"
    assert dict(skips.by_reason) == {"malformed_json": 1, "bad_utf8": 1, "not_an_object": 1, "missing_text": 1,
                                     "empty": 1, "too_short": 1, "exact_duplicate": 1, "bad_domain": 1}
    where = {e.split(": ")[0] for e in skips.examples}
    assert where == {f"{path}:{n}" for n in (2, 3, 4, 5, 6, 7, 8, 10)}


def test_strict_mode_raises_at_the_first_bad_line(tmp_path):
    path = tmp_path / "mixed.jsonl"
    write_broken_fixture(path)
    with pytest.raises(DataError, match=r"mixed.jsonl:2: malformed_json"):
        list(read_documents([path], ReadPolicy(strict=True)))


def test_gzip_txt_folders_and_missing_paths(tmp_path):
    with gzip.open(tmp_path / "news.jsonl.gz", "wt") as f:
        f.write(json.dumps({"body": "gzip document text", "src": "paper"}) + "\n")
    folder = tmp_path / "poems"
    folder.mkdir()
    (folder / "a.txt").write_text("roses are red, violets are blue")
    (folder / "b.txt").write_bytes(b"\xff broken")
    skips = SkipLog()
    docs = list(read_documents([tmp_path / "news.jsonl.gz", folder],
                               ReadPolicy(text_field="body", domain_field="src"), skips))
    assert [(d.domain, d.text) for d in docs] == [("paper", "gzip document text"),
                                                 ("poems", "roses are red, violets are blue")]
    assert skips.by_reason == {"bad_utf8": 1}
    with pytest.raises(DataError, match="nope.jsonl: no such file or folder"):
        list(read_documents([tmp_path / "nope.jsonl"]))
    with pytest.raises(DataError, match="unsupported input"):
        (tmp_path / "x.csv").write_text("a,b")
        list(read_documents([tmp_path / "x.csv"]))


def test_a_lone_surrogate_is_a_counted_skip_with_its_line_not_an_abort(tmp_path):
    # JSON may escape a lone surrogate ("\ud800"); the str it reads into has no UTF-8 form, and
    # the first writer that encodes it (digest, tokenizer) used to abort the whole prepare.
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "a lone \\ud800 surrogate in a long enough text", "domain": "x"}\n'
                    '{"text": "a fine document that is long enough", "domain": "\\udfff"}\n'
                    '{"text": "a fine document that is long enough", "domain": "x"}\n')
    skips = SkipLog()
    docs = list(read_documents([path], ReadPolicy(), skips))
    assert [d.where for d in docs] == [f"{path}:3"]
    assert dict(skips.by_reason) == {"bad_unicode": 2}
    assert sorted(e.split(": ")[0] for e in skips.examples) == [f"{path}:1", f"{path}:2"]
    assert "U+D800 at character 7" in " ".join(skips.examples)
    with pytest.raises(DataError, match=r"s.jsonl:1: bad_unicode: surrogates not allowed"):
        list(read_documents([path], ReadPolicy(strict=True)))
