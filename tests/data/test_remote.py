"""Prepared folders at a URL: served over HTTP by a server the test starts on 127.0.0.1, and a
tampered manifest that must not reach a command, another host or a file outside the folder."""

import json
import shutil
import socket
from itertools import islice

import pytest

from lory_lightning.data.datamodule import LoryDataModule
from lory_lightning.data.location import check_folder, member
from lory_lightning.data.manifest import ManifestError, load_manifest


def batches(dm, n, val=False):
    dm.setup("fit")
    loader = dm.val_dataloader() if val else dm.train_dataloader()
    return [b["input_ids"].tolist() for b in islice(loader, n)]


@pytest.mark.parametrize("workers", [0, 2])
def test_training_from_an_http_folder_streams_what_the_local_folder_does(small_data, http_root, workers):
    root, base, requested = http_root
    shutil.copytree(small_data, root / "data")
    kw = dict(seq_len=32, vocab_size=300, batch_size=4, num_workers=workers)
    remote, local = LoryDataModule(data_dir=f"{base}/data/", **kw), LoryDataModule(data_dir=str(small_data), **kw)
    assert batches(remote, 6) == batches(local, 6)
    assert batches(remote, 3, val=True) == batches(local, 3, val=True)
    assert remote.tokenizer_json == local.tokenizer_json
    assert remote.unigram_log_probs().tolist() == local.unigram_log_probs().tolist()
    assert any(p.endswith(".tar.gz") for p in requested)


def test_file_urls_work_like_paths(small_data):
    kw = dict(seq_len=32, vocab_size=300, batch_size=4)
    assert batches(LoryDataModule(data_dir=small_data.as_uri(), **kw), 2) == \
        batches(LoryDataModule(data_dir=str(small_data), **kw), 2)


def test_an_unreachable_url_is_named(small_data):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(OSError, match=f"http://127.0.0.1:{port}/data/manifest.json: cannot be read .*reachable"):
        LoryDataModule(data_dir=f"http://127.0.0.1:{port}/data", seq_len=32, vocab_size=300).setup("fit")


def test_a_url_without_a_manifest_and_a_shard_missing_on_the_server(small_data, http_root):
    root, base, _ = http_root
    with pytest.raises(FileNotFoundError, match=f"{base}/nothing/manifest.json: no prepared data"):
        LoryDataModule(data_dir=f"{base}/nothing", seq_len=32, vocab_size=300).setup("fit")
    shutil.copytree(small_data, root / "data")
    first = json.loads((root / "data" / "manifest.json").read_text())["splits"]["val"]["shards"][0]["name"]
    (root / "data" / first).unlink()
    dm = LoryDataModule(data_dir=f"{base}/data", seq_len=32, vocab_size=300, batch_size=4)
    with pytest.raises(ValueError, match=f"{base}/data/{first}: missing"):
        batches(dm, 1, val=True)


def test_object_store_urls_keep_their_double_slash():
    # round 1 joined paths with pathlib: s3://bucket/x became s3:/bucket/x
    assert member("s3://bucket/x/", "train-00000.tar.gz") == "s3://bucket/x/train-00000.tar.gz"
    assert member("gs://b/data", "manifest.json") == "gs://b/data/manifest.json"


@pytest.mark.parametrize("name", ["pipe:cat /etc/passwd", "../secret.tar.gz", "http://127.0.0.2/x.tar.gz",
                                  "/etc/passwd", "sub/train-00000.tar.gz", ".hidden", ""])
def test_a_name_that_is_not_plain_is_refused(name):
    with pytest.raises(ValueError, match="not a plain file name"):
        member("s3://bucket/data", name)


def test_a_command_is_refused_as_a_data_folder():
    with pytest.raises(ValueError, match="'pipe:' locations run a shell command and are refused"):
        check_folder("pipe:curl -s http://host/x")
    with pytest.raises(ValueError, match="'pipe:' locations run a shell command"):
        LoryDataModule(data_dir="pipe:rm -rf ~")


@pytest.mark.parametrize("name", ["pipe:touch {marker}", "../outside.tar.gz", "{base}/elsewhere/train-00000.tar.gz",
                                  "http://127.0.0.2:1/train-00000.tar.gz", "{outside}"])
def test_a_tampered_manifest_over_http_reaches_nothing_outside_its_folder(small_data, http_root, tmp_path, name):
    root, base, requested = http_root
    shutil.copytree(small_data, root / "data")
    (root / "elsewhere").mkdir()
    shutil.copy(small_data / "train-00000.tar.gz", root / "elsewhere")
    marker = tmp_path / "ran"
    path = root / "data" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["splits"]["train"]["shards"][0]["name"] = name.format(marker=marker, base=base,
                                                                   outside=str(root / "elsewhere" / "train-00000.tar.gz"))
    path.write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match=r"key 'splits.train.shards\[0\].name' is .* expected 'train-00000.tar.gz'"):
        LoryDataModule(data_dir=f"{base}/data", seq_len=32, vocab_size=300).setup("fit")
    with pytest.raises(ManifestError):
        load_manifest(f"{base}/data")
    assert not marker.exists()
    assert requested and all(p == "/data/manifest.json" for p in requested)  # nothing else was fetched
