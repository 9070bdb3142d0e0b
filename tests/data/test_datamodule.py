"""LoryDataModule and its streams: disjoint data per rank and worker, seekable block shuffle, fail-fast
checks, validation order, shards verified before use."""

import json
import os
import shutil
from itertools import islice

import numpy as np
import pytest
import torch

from lory_lightning.data.datamodule import LoryDataModule
from lory_lightning.data.shards import ShardReader
from lory_lightning.data.stream import TrainStream, ValStream, locate


def manifest_of(folder):
    return json.loads((folder / "manifest.json").read_text())


def entries(folder, split):
    return manifest_of(folder)["splits"][split]["shards"]


def names(shards):
    return [s["name"] for s in shards]


def stream(folder, seed=1, block=4, rank=0, world=1, reader=None):
    return TrainStream(entries(folder, "train"), rank, world, seed=seed, shuffle_block=block,
                       reader=reader or ShardReader(str(folder)))


def keys(stream_, n, worker=0, workers=1):
    return [s["key"] for s in islice(stream_.samples(worker, workers), n)]


def test_ranks_and_workers_get_disjoint_shards_covering_all(small_data):
    shards = names(entries(small_data, "train"))
    assert len(shards) >= 8
    for world, workers in ((2, 1), (2, 2), (3, 1)):
        seen = []
        for rank in range(world):
            s = stream(small_data, seed=5, rank=rank, world=world)
            for w in range(workers):
                seen.extend(names(s.shards_for(epoch=0, worker=w, num_workers=workers)))
        assert sorted(seen) == sorted(shards)  # disjoint and complete


def test_each_pass_reshuffles_shards_from_the_seed(small_data):
    s = stream(small_data, seed=5)
    assert s.shards_for(0, 0, 1) != s.shards_for(1, 0, 1)
    assert s.shards_for(1, 0, 1) == stream(small_data, seed=5).shards_for(1, 0, 1)


def test_a_worker_without_shard_fails_fast(small_data):
    s = TrainStream(entries(small_data, "train")[:3], rank=1, world_size=2, seed=0, shuffle_block=1)
    with pytest.raises(ValueError, match="rank 1 worker 1 has no training shard: 3 shards for 2 ranks x 2 workers"):
        s.shards_for(0, worker=1, num_workers=2)
    with pytest.raises(ValueError, match="shuffle_block must be >= 1 shard, got 0"):
        TrainStream(entries(small_data, "train"), 0, 1, seed=0, shuffle_block=0)


def test_stream_is_seeded_and_blocks_shuffle_whole_sequences(small_data):
    n = manifest_of(small_data)["splits"]["train"]["sequences"]
    a, b, c = keys(stream(small_data, seed=1), n), keys(stream(small_data, seed=1), n), keys(stream(small_data, seed=2), n)
    assert a == b and a != c
    assert len(set(a)) == n  # one pass visits every sequence once
    # each block of 4 shards (4 sequences each) is handed out whole before the next one starts
    blocks = stream(small_data, seed=1).blocks_for(0, 0, 1)
    reader = ShardReader(str(small_data))
    first_block = {s["key"] for e in blocks[0] for s in reader.read(e)}
    assert set(a[:len(first_block)]) == first_block and a[:len(first_block)] != sorted(first_block)
    # one shard per block: each shard's 4 sequences stay together, permuted
    one = keys(stream(small_data, seed=1, block=1), 4)
    shard = stream(small_data, seed=1, block=1).shards_for(0, 0, 1)[0]
    assert sorted(one) == sorted(s["key"] for s in reader.read(shard))


def test_locate_is_arithmetic_on_block_sizes():
    sizes = {0: [3, 2], 1: [1, 4]}.get
    assert [locate(p, lambda e: sizes(e % 2)) for p in (0, 2, 3, 4, 5, 6, 9, 10, 11)] == [
        (0, 0, 0), (0, 0, 2), (0, 1, 0), (0, 1, 1), (1, 0, 0), (1, 1, 0), (1, 1, 3), (2, 0, 0), (2, 0, 1)]
    with pytest.raises(ValueError, match="position must be >= 0"):
        locate(-1, lambda e: [1])
    with pytest.raises(ValueError, match="pass 0 has an empty block"):
        locate(0, lambda e: [2, 0])


class CountingReader(ShardReader):
    def __init__(self, folder):
        super().__init__(folder)
        self.reads = 0

    def read(self, entry):
        self.reads += 1
        return super().read(entry)


@pytest.mark.parametrize("position", [0, 5, 63, 200, 1000])
def test_a_resumed_stream_seeks_to_its_position_reading_one_block(small_data, position):
    n = manifest_of(small_data)["splits"]["train"]["sequences"]
    full = keys(stream(small_data, seed=3, block=2), position + 10, worker=1, workers=2)
    reader = CountingReader(str(small_data))
    resumed = stream(small_data, seed=3, block=2, reader=reader)
    resumed.skip_by_worker = [0, position]
    assert keys(resumed, 10, worker=1, workers=2) == full[position:]
    assert position < 5 * n  # several passes in: the first sample still costs one block of 2 shards
    resumed = stream(small_data, seed=3, block=2, reader=reader)
    resumed.skip_by_worker = [0, position]
    reader.reads = 0
    next(resumed.samples(1, 2))
    assert reader.reads <= 2


def test_examples_are_shifted_targets_with_target_domains(small_data):
    ex = next(iter(stream(small_data, seed=0)))
    assert ex["input_ids"].shape == ex["targets"].shape == ex["domains"].shape == (32,)
    assert ex["input_ids"].dtype == torch.long
    sample = next(stream(small_data, seed=0).samples(0, 1))
    assert ex["input_ids"].tolist() == sample["tokens"][:-1].tolist()
    assert ex["targets"].tolist() == sample["tokens"][1:].tolist()
    assert ex["domains"].tolist() == sample["domains"][1:].tolist()


def test_validation_is_finite_in_order_and_split_by_rank(small_data):
    val, reader = entries(small_data, "val"), ShardReader(str(small_data))
    everything = [tuple(x["input_ids"].tolist()) for x in ValStream(val, 0, 1, reader)]
    parts = [[tuple(x["input_ids"].tolist()) for x in ValStream(val, r, 2, reader)] for r in range(2)]
    assert sorted(parts[0] + parts[1]) == sorted(everything)
    assert everything[0::2] == parts[0] and everything[1::2] == parts[1]
    # domains are dealt round-robin, so the first sequences already cover every domain
    doms = [x["domains"][0].item() for x in ValStream(val, 0, 1, reader)]
    assert set(doms[:3]) == {0, 1, 2}


def test_setup_checks_manifest_length_and_shards(small_data, tmp_path):
    dm = LoryDataModule(data_dir=str(tmp_path / "nothing"), seq_len=32)
    with pytest.raises(FileNotFoundError, match="no prepared data; run `lory prepare"):
        dm.setup("fit")
    with pytest.raises(ValueError, match="holds sequences of 32 tokens, the model trains on 64"):
        LoryDataModule(data_dir=str(small_data), seq_len=64, vocab_size=300).setup("fit")
    with pytest.raises(ValueError, match="prepared with order='similarity', this run asks for data.order='random'"):
        LoryDataModule(data_dir=str(small_data), seq_len=32, vocab_size=300, order="random").setup("fit")
    dm = LoryDataModule(data_dir=str(small_data), seq_len=32, vocab_size=300)
    dm.setup("fit")
    assert dm.domains == ["cooking", "space", "law"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (8, 32)


@pytest.mark.parametrize("split", ["train", "val"])  # a mutant that verified training shards only survived
def test_a_corrupt_shard_is_named_when_read_before_any_of_it_is_used(small_data, tmp_path, split):
    copy = tmp_path / "copy"
    shutil.copytree(small_data, copy)
    victim = copy / entries(copy, split)[1]["name"]
    data = bytearray(victim.read_bytes())
    data[200] ^= 0xFF
    victim.write_bytes(bytes(data))
    dm = LoryDataModule(data_dir=str(copy), seq_len=32, vocab_size=300, batch_size=1)
    dm.setup("fit")  # setup stats the shards only: hashing happens as each is first read
    total = manifest_of(copy)["splits"][split]["sequences"]
    loader = dm.train_dataloader() if split == "train" else dm.val_dataloader()
    with pytest.raises(ValueError, match=f"1 shard\\(s\\) fail verification .*{victim.name}: sha256 differs"):
        for _ in islice(loader, total):  # one pass reaches it
            pass
    tolerant = LoryDataModule(data_dir=str(copy), seq_len=32, vocab_size=300, batch_size=1, max_bad_shards=1)
    tolerant.setup("fit")
    loader = tolerant.train_dataloader() if split == "train" else tolerant.val_dataloader()
    with pytest.warns(UserWarning, match=f"leaving out .*{victim.name}: sha256 differs"):
        got = [b["input_ids"][0] for b in islice(loader, total - 4)]
    good = [s["key"] for e in entries(copy, split) if e["name"] != victim.name for s in tolerant.reader().read(e)]
    assert len(got) == len(good) == total - 4  # a pass of the other shards' sequences, each once
    LoryDataModule(data_dir=str(copy), seq_len=32, vocab_size=300, verify=False).setup("fit")  # the user's choice


def test_missing_and_truncated_shards_are_named_counted_and_left_out_below_the_threshold(small_data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_data, copy)
    shards = entries(copy, "train")
    (copy / shards[0]["name"]).unlink()
    truncated = copy / shards[1]["name"]
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"2 shard\(s\) fail verification .*max_bad_shards is 1.*missing.*truncated"):
        LoryDataModule(data_dir=str(copy), seq_len=32, vocab_size=300, max_bad_shards=1).setup("fit")
    dm = LoryDataModule(data_dir=str(copy), seq_len=32, vocab_size=300, max_bad_shards=2)
    with pytest.warns(UserWarning, match="leaving out .*missing"):
        dm.setup("fit")
    assert dm.bad_shards == sorted([shards[0]["name"], shards[1]["name"]])
    assert len(dm.shards("train")) == len(shards) - 2
    assert next(iter(dm.train_dataloader()))["input_ids"].shape == (8, 32)  # trains on the rest
    assert dm.reader().max_bad_shards == 0  # the two found at setup use up the bound


def test_a_shard_is_hashed_at_every_read_so_an_edit_that_keeps_size_and_mtime_is_refused(small_data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_data, copy)
    entry = entries(copy, "train")[0]
    path = copy / entry["name"]
    assert ShardReader(str(copy)).read(entry)
    good = path.read_bytes()
    st = os.stat(path)
    path.write_bytes(good[:200] + bytes([good[200] ^ 0xFF]) + good[201:])
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # bit rot: size and mtime as they were
    with pytest.raises(ValueError, match="sha256 differs"):
        ShardReader(str(copy)).read(entry)
    # with hashing turned off (data.verify false), the gzip CRC-32 still sees it
    with pytest.raises(ValueError, match=f"{entry['name']}: damaged .*gzip CRC-32 or length check failed"):
        ShardReader(str(copy), verify=False).read(entry)


def test_every_bit_flip_in_a_shard_is_caught_never_parsed_into_other_samples(small_data, tmp_path):
    # Bit rot: one bit flipped in place, size and mtime kept. 1,000 flips at seeded random
    # positions (header, deflate stream, CRC and length included): every one is named, or the
    # shard is left out and counted; none is read into samples. With hashing off (data.verify
    # false) the gzip checks alone still never let a flip through as other samples: the few a
    # deflate stream does not notice (unused code-length bits) decompress to the very same bytes.
    copy = tmp_path / "copy"
    shutil.copytree(small_data, copy)
    entry = entries(copy, "train")[0]
    path = copy / entry["name"]
    good = path.read_bytes()
    original = ShardReader(str(copy)).read(entry)
    st = os.stat(path)
    rng = np.random.default_rng(0)
    named = skipped = unhashed_same = 0
    for bit in rng.integers(0, len(good) * 8, size=1000):
        data = bytearray(good)
        data[bit // 8] ^= 1 << int(bit % 8)
        path.write_bytes(data)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        reader = ShardReader(str(copy), max_bad_shards=int(bit % 2))  # both ways of failing
        try:
            samples = reader.read(entry)
        except ValueError as err:
            assert entry["name"] in str(err) and "sha256 differs" in str(err), str(err)
            named += 1
        else:
            assert samples == [] and reader.bad == [entry["name"]], f"bit {bit} was read into samples"
            skipped += 1
        try:
            samples = ShardReader(str(copy), verify=False).read(entry)
        except ValueError as err:
            assert entry["name"] in str(err) and "damaged" in str(err), str(err)
        else:
            assert len(samples) == len(original) and all(
                a["key"] == b["key"] and (a["tokens"] == b["tokens"]).all() and (a["domains"] == b["domains"]).all()
                and a["meta"] == b["meta"] for a, b in zip(samples, original)), f"bit {bit}: other samples"
            unhashed_same += 1
    assert named + skipped == 1000 and named > 0 and skipped > 0
    assert unhashed_same < 50  # the gzip checks alone catch nearly all (35 of 5,616 positions of this shard pass)
