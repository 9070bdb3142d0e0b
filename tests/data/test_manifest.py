"""manifest.json's schema check: every hand edit is named by its file and key, with the fix."""

import copy
import json

import pytest

from lory_lightning.data.manifest import ManifestError, check_manifest, load_manifest

SHARD = {"name": "train-00000.tar.gz", "sha256": "ab", "sequences": 3, "bytes": 10}
GOOD = {"format_version": 2, "config": {}, "domains": ["wiki", "code"], "vocab_size": 300, "eod_id": 0,
        "seq_len": 32, "token_dtype": "uint16",
        "splits": {"train": {"sequences": 5, "shards": [SHARD, {**SHARD, "name": "train-00001.tar.gz", "sequences": 2}]},
                   "val": {"sequences": 3, "shards": [{**SHARD, "name": "val-00000.tar.gz"}]}}}


def edited(edit) -> dict:
    manifest = copy.deepcopy(GOOD)
    edit(manifest)
    return manifest


@pytest.mark.parametrize("edit,message", [
    (lambda m: m["domains"].__setitem__(1, 7), "key 'domains[1]' is a int, not a str"),
    (lambda m: m.__setitem__("domains", []), "key 'domains' is empty"),
    (lambda m: m["splits"].pop("val"), "key 'splits.val' is missing"),
    (lambda m: m["splits"]["train"].__setitem__("sequences", "5"), "key 'splits.train.sequences' is a str, not a int"),
    (lambda m: m["splits"]["val"].__setitem__("shards", {}), "key 'splits.val.shards' is a dict, not a list"),
    (lambda m: m["splits"]["train"]["shards"].__setitem__(1, "train-00001.tar.gz"),
     "key 'splits.train.shards[1]' is a str, not a dict"),
    (lambda m: m["splits"]["train"]["shards"][1].__setitem__("bytes", 1.5),
     "key 'splits.train.shards[1].bytes' is a float, not a int"),
    (lambda m: m["splits"]["train"]["shards"].pop(0),
     "key 'splits.train.shards[0].name' is 'train-00001.tar.gz', expected 'train-00000.tar.gz' (an entry removed or "
     "reordered?)"),
    (lambda m: m["splits"]["train"].__setitem__("sequences", 6),
     "key 'splits.train.shards' lists 5 sequences, 'splits.train.sequences' says 6 (a shard entry removed?)"),
])
def test_each_hand_edit_is_named_by_file_and_key_with_the_fix(tmp_path, edit, message):
    path = tmp_path / "data" / "manifest.json"
    check_manifest(GOOD, path)  # the unedited manifest passes
    with pytest.raises(ManifestError) as err:
        check_manifest(edited(edit), path)
    fix = f"the manifest was edited or damaged: rerun `lory prepare --output {tmp_path / 'data'} --overwrite`"
    assert str(err.value) == f"{path}: {message}; {fix}"


def test_a_missing_or_unparsable_manifest_says_what_to_run(tmp_path):
    folder = tmp_path / "data"
    with pytest.raises(FileNotFoundError) as err:
        load_manifest(folder)
    assert str(err.value) == f"{folder / 'manifest.json'}: no prepared data; run `lory prepare --output {folder}`"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"domains": ["wiki"')
    with pytest.raises(ManifestError) as err:
        load_manifest(folder)
    assert str(err.value).startswith(f"{folder / 'manifest.json'}: not valid JSON (")
    assert str(err.value).endswith(f"); the file is truncated or damaged: rerun `lory prepare --output {folder} "
                                   "--overwrite`")
    (folder / "manifest.json").write_text(json.dumps(GOOD, ensure_ascii=False).replace("wiki", "wikí"),
                                          encoding="utf-8")
    assert load_manifest(folder)["domains"] == ["wikí", "code"]  # read as UTF-8 whatever the locale
