"""LoryDataModule: disjoint data per rank and worker, fail-fast checks, validation order."""

import json
from itertools import islice

import pytest
import torch

from lory_lightning.data.datamodule import LoryDataModule, TrainStream, ValStream, read_shards


def manifest_of(folder):
    return json.loads((folder / "manifest.json").read_text())


def urls(folder, split):
    return [str(folder / s["name"]) for s in manifest_of(folder)["splits"][split]["shards"]]


def keys_of_first_pass(stream, n):
    return [tuple(x["input_ids"].tolist()) for x in islice(iter(stream), n)]


def test_ranks_and_workers_get_disjoint_shards_covering_all(small_data):
    shards = urls(small_data, "train")
    assert len(shards) >= 8
    for world, workers in ((2, 1), (2, 2), (3, 1)):
        seen = []
        for rank in range(world):
            stream = TrainStream(shards, rank, world, seed=5, shuffle_buffer=0)
            for w in range(workers):
                seen.extend(stream.shards_for(epoch=0, worker=w, num_workers=workers))
        assert sorted(seen) == sorted(shards)  # disjoint and complete


def test_each_pass_reshuffles_shards_from_the_seed(small_data):
    shards = urls(small_data, "train")
    stream = TrainStream(shards, 0, 1, seed=5, shuffle_buffer=0)
    assert stream.shards_for(0, 0, 1) != stream.shards_for(1, 0, 1)
    assert stream.shards_for(1, 0, 1) == TrainStream(shards, 0, 1, seed=5, shuffle_buffer=0).shards_for(1, 0, 1)


def test_a_worker_without_shard_fails_fast(small_data):
    shards = urls(small_data, "train")[:3]
    stream = TrainStream(shards, rank=1, world_size=2, seed=0, shuffle_buffer=0)
    with pytest.raises(ValueError, match="rank 1 worker 1 has no training shard: 3 shards for 2 ranks x 2 workers"):
        stream.shards_for(0, worker=1, num_workers=2)


def test_stream_is_seeded_and_buffer_shuffles_whole_sequences(small_data):
    shards = urls(small_data, "train")
    n = manifest_of(small_data)["splits"]["train"]["sequences"]
    plain = keys_of_first_pass(TrainStream(shards, 0, 1, seed=1, shuffle_buffer=0), n)
    a = keys_of_first_pass(TrainStream(shards, 0, 1, seed=1, shuffle_buffer=16), n)
    b = keys_of_first_pass(TrainStream(shards, 0, 1, seed=1, shuffle_buffer=16), n)
    c = keys_of_first_pass(TrainStream(shards, 0, 1, seed=2, shuffle_buffer=16), n)
    assert a == b and a != c and a != plain
    assert len(set(plain)) == n  # one pass visits every sequence once
    # the buffer holds back at most 15 sequences of the first pass
    assert len(set(a) & set(plain)) >= n - 15


def test_examples_are_shifted_targets_with_target_domains(small_data):
    sample = next(read_shards(urls(small_data, "train")))
    ex = next(iter(TrainStream(urls(small_data, "train"), 0, 1, seed=0, shuffle_buffer=0)))
    assert ex["input_ids"].shape == ex["targets"].shape == ex["domains"].shape == (32,)
    assert ex["input_ids"].dtype == torch.long
    first = TrainStream(urls(small_data, "train"), 0, 1, 0, 0).shards_for(0, 0, 1)[0]
    sample = next(read_shards([first]))
    assert ex["input_ids"].tolist() == sample["tokens"][:-1].tolist()
    assert ex["targets"].tolist() == sample["tokens"][1:].tolist()
    assert ex["domains"].tolist() == sample["domains"][1:].tolist()


def test_validation_is_finite_in_order_and_split_by_rank(small_data):
    val = urls(small_data, "val")
    everything = [tuple(x["input_ids"].tolist()) for x in ValStream(val, 0, 1)]
    parts = [[tuple(x["input_ids"].tolist()) for x in ValStream(val, r, 2)] for r in range(2)]
    assert sorted(parts[0] + parts[1]) == sorted(everything)
    assert everything[0::2] == parts[0] and everything[1::2] == parts[1]
    # domains are dealt round-robin, so the first sequences already cover every domain
    doms = [x["domains"][0].item() for x in ValStream(val, 0, 1)]
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
def test_a_corrupt_shard_is_named(small_data, tmp_path, split):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_data, copy)
    victim = copy / manifest_of(copy)["splits"][split]["shards"][1]["name"]
    data = bytearray(victim.read_bytes())
    data[2000] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=f"{victim.name}: sha256 differs"):
        LoryDataModule(data_dir=str(copy), seq_len=32, vocab_size=300).setup("fit")
    LoryDataModule(data_dir=str(copy), seq_len=32, vocab_size=300, verify=False).setup("fit")  # the user's explicit choice


def test_missing_and_truncated_shards_are_named_counted_and_left_out_below_the_threshold(small_data, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_data, copy)
    shards = manifest_of(copy)["splits"]["train"]["shards"]
    (copy / shards[0]["name"]).unlink()
    truncated = copy / shards[1]["name"]
    truncated.write_bytes(truncated.read_bytes()[:1000])
    with pytest.raises(ValueError, match=r"2 shard\(s\) fail verification .*max_bad_shards is 1.*missing.*truncated"):
        LoryDataModule(data_dir=str(copy), seq_len=32, vocab_size=300, max_bad_shards=1).setup("fit")
    dm = LoryDataModule(data_dir=str(copy), seq_len=32, vocab_size=300, max_bad_shards=2)
    with pytest.warns(UserWarning, match="leaving out .*missing"):
        dm.setup("fit")
    assert dm.bad_shards == sorted([shards[0]["name"], shards[1]["name"]])
    assert len(dm._urls("train")) == len(shards) - 2
    assert next(iter(dm.train_dataloader()))["input_ids"].shape == (8, 32)  # trains on the rest
