"""Every input format reads the same documents: jsonl.zst, parquet, a Hugging Face dataset saved to
disk, and a folder served over HTTP; damage and missing packages are named."""

import gzip
import json
import shutil

import pytest

from conftest import make_corpus
from lory_lightning.data.prepare import PrepareConfig, prepare
from lory_lightning.data.sources import DataError, ReadPolicy, SkipLog, input_files, read_documents

RECORDS = [{"text": "the first document, about tea and scones", "domain": "food"},
           {"text": "a second one, about the orbit of a comet", "domain": "space"},
           {"text": "no domain here: the file names it"}]


def texts(docs):
    return [(d.domain, d.text) for d in docs]


def test_jsonl_zst_reads_like_jsonl_and_a_truncated_one_keeps_what_came_before(tmp_path):
    zstd = pytest.importorskip("zstandard")
    many = RECORDS + [{"text": f"document number {i} says {i * 7919 % 104729} things", "domain": "n"} for i in range(20000)]
    lines = "".join(json.dumps(r) + "\n" for r in many).encode()
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.jsonl").write_bytes(lines)
    packed = zstd.ZstdCompressor(write_content_size=False).compress(lines)
    (tmp_path / "notes.jsonl.zst").write_bytes(packed)
    plain = texts(read_documents([tmp_path / "plain" / "notes.jsonl"]))
    zst = texts(read_documents([tmp_path / "notes.jsonl.zst"]))
    assert zst == plain == texts(read_documents([tmp_path / "plain" / "notes.jsonl"]))
    assert plain[2] == ("notes", RECORDS[2]["text"])
    (tmp_path / "cut.jsonl.zst").write_bytes(packed[: len(packed) // 2])
    skips = SkipLog()
    kept = list(read_documents([tmp_path / "cut.jsonl.zst"], skips=skips))
    assert 3 < len(kept) < len(many) and [d.text for d in kept] == [t for _, t in plain[:len(kept)]]  # the lines before the cut
    assert skips.by_reason == {"unreadable_rest_of_file": 1}
    assert any("cut.jsonl.zst:" in e and "rest of this file is lost" in e for e in skips.examples)


def test_parquet_rows_are_numbered_like_lines(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = RECORDS + [{"text": None, "domain": "food"}, {"text": "a fifth document, a long enough text", "domain": None}]
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "web.parquet", row_group_size=2)  # several row groups
    skips = SkipLog()
    docs = list(read_documents([tmp_path / "web.parquet"], ReadPolicy(), skips))
    assert texts(docs) == [("food", RECORDS[0]["text"]), ("space", RECORDS[1]["text"]), ("web", RECORDS[2]["text"]),
                           ("web", rows[4]["text"])]
    assert docs[3].where == f"{tmp_path / 'web.parquet'}:5"
    assert skips.by_reason == {"missing_text": 1} and skips.examples[0].startswith(f"{tmp_path / 'web.parquet'}:4: missing_text")
    data = (tmp_path / "web.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2])  # the footer is gone: nothing readable
    skips = SkipLog()
    assert list(read_documents([tmp_path / "cut.parquet"], ReadPolicy(), skips)) == []
    assert skips.by_reason == {"unreadable_rest_of_file": 1} and skips.examples[0].startswith(f"{tmp_path / 'cut.parquet'}:1: ")


def test_a_hugging_face_dataset_saved_to_disk(tmp_path):
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([{"text": r["text"], "domain": r.get("domain")} for r in RECORDS])
    ds.save_to_disk(str(tmp_path / "mycorpus"))
    docs = list(read_documents([tmp_path / "mycorpus"]))
    assert texts(docs) == [("food", RECORDS[0]["text"]), ("space", RECORDS[1]["text"]), ("mycorpus", RECORDS[2]["text"])]
    assert [f.kind for f in input_files([tmp_path / "mycorpus"])] == ["arrow"]
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(DataError, match=r"dict: a Hugging Face DatasetDict; give one split's folder, e.g. .*dict/train"):
        input_files([tmp_path / "dict"])
    assert texts(read_documents([tmp_path / "dict" / "train"]))[0] == ("food", RECORDS[0]["text"])


def test_a_missing_optional_package_names_the_extra(tmp_path, monkeypatch):
    import importlib

    (tmp_path / "web.parquet").write_bytes(b"PAR1")
    real = importlib.import_module
    monkeypatch.setattr(importlib, "import_module",
                        lambda name, *a: (_ for _ in ()).throw(ImportError(name)) if name.startswith("pyarrow")
                        else real(name, *a))
    with pytest.raises(ImportError, match=r"a .parquet input needs the pyarrow package: pip install 'lory-lightning\[io\]'"):
        list(read_documents([tmp_path / "web.parquet"]))


def test_prepare_from_a_folder_over_http_equals_prepare_from_the_local_folder(tmp_path, http_root):
    root, base, requested = http_root
    local = make_corpus(root / "in")
    with gzip.open(root / "in" / "extra.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": "one more document read from a compressed file over http", "domain": "law"}) + "\n")
    settings = dict(seq_len=32, vocab_size=300, sequences_per_shard=4, val_fraction=0.1)
    remote = prepare(PrepareConfig(output=str(tmp_path / "r"), inputs=[f"{base}/in/"], **settings), quiet=True)
    here = prepare(PrepareConfig(output=str(tmp_path / "l"), inputs=[str(root / "in")], **settings), quiet=True)
    assert [f.name for f in input_files([f"{base}/in/"])] == sorted(p.name for p in [*local, root / "in" / "extra.jsonl.gz"])
    for key in ("inputs", "splits", "counts_by_domain", "ordering"):
        assert remote[key] == here[key]
    assert (tmp_path / "r" / "train-00000.tar.gz").read_bytes() == (tmp_path / "l" / "train-00000.tar.gz").read_bytes()
    assert remote["skipped"]["by_reason"] == here["skipped"]["by_reason"]
    assert any(p.endswith("extra.jsonl.gz") for p in requested)
    with pytest.raises(DataError, match=f"{base}/nothing.jsonl: no such file or folder"):
        input_files([f"{base}/nothing.jsonl"])
    shutil.rmtree(root / "in")
