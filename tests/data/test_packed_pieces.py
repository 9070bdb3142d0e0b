"""The training stream written as pieces (one per partition) and read back end to end, and the
sequence permutation computed per position: against the whole stream packed at once."""

import numpy as np
import pytest

from lory_lightning.data import packed
from lory_lightning.data.packed import PackedStream, write_piece
from lory_lightning.data.packing import documents_in, num_sequences, pack_stream, sequence_slice, shuffled
from lory_lightning.data.rowfile import JoinedRows, RowFile


def test_shuffled_is_a_seeded_permutation_computed_for_any_positions():
    for n in (1, 2, 3, 5, 64, 65, 1000, 4099):
        whole = shuffled(np.arange(n), n, seed=7)
        assert sorted(whole.tolist()) == list(range(n)), n  # a bijection of 0..n-1
        picked = np.array(sorted({0, n - 1, n // 2, n // 3}))
        assert np.array_equal(shuffled(picked, n, seed=7), whole[picked])  # a shard's positions alone
    assert np.array_equal(shuffled(np.arange(1000), 1000, 7), shuffled(np.arange(1000), 1000, 7))
    assert not np.array_equal(shuffled(np.arange(1000), 1000, 7), shuffled(np.arange(1000), 1000, 8))
    with pytest.raises(ValueError, match="0..9"):
        shuffled(np.array([10]), 10, 0)


def test_shuffled_mixes_the_whole_stream_into_every_shard():
    """Consecutive sequences come from one partition; a shard of 256 of 100,000 must span the stream."""
    n, per = 100_000, 256
    for j in range(0, n // per, 50):
        got = shuffled(np.arange(j * per, (j + 1) * per), n, seed=0)
        tenths = np.bincount(got * 10 // n, minlength=10)
        assert tenths.min() >= 10, (j, tenths.tolist())  # every tenth of the stream in every shard
    first = shuffled(np.arange(n), n, 0)
    assert abs(np.corrcoef(np.arange(n), first)[0, 1]) < 0.02  # no trace of the stream order


def test_pieces_read_end_to_end_give_the_stream_packed_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(packed, "INDEX_EVERY", 4)  # many index blocks, and documents longer than a block
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 40, size=120)
    lengths[[5, 6, 50]] = [0, 300, 700]  # an empty document, and documents spanning many sequences
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    flat = rng.integers(1, 500, size=int(lengths.sum())).astype(np.uint16)
    flat.tofile(tmp_path / "tokens.bin")
    domains = rng.integers(0, 3, size=120).astype(np.uint8)
    order = rng.permutation(120)
    cuts = [0, 30, 30, 31, 90, 120]  # the pieces: an empty one and a one-document one among them
    tokens = JoinedRows([RowFile(tmp_path / "tokens.bin", np.uint16, (len(flat),))])
    counts = np.zeros(500, dtype=np.int64)
    prefixes = []
    for q, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        docs = order[a:b]
        prefixes.append(tmp_path / f"train-{q:06d}")
        counts += write_piece(prefixes[-1], tokens, offsets[docs], lengths[docs], domains[docs], docs, 0, 500)
    total = int(lengths.sum()) + 120
    ref_tokens, ref_domains = np.zeros(total, np.uint16), np.zeros(total, np.uint8)
    starts = pack_stream(order, offsets, lengths, domains, flat, 0, ref_tokens, ref_domains)
    assert np.array_equal(counts, np.bincount(ref_tokens, minlength=500))
    seq_len = 16
    with PackedStream(prefixes, np.uint16) as stream:
        assert len(stream) == total
        for i in range(num_sequences(total, seq_len)[0]):
            got_tokens, got_domains, docs = stream.sequence(i, seq_len)
            s = sequence_slice(i, seq_len)
            first, last = documents_in(i, seq_len, starts)
            assert np.array_equal(got_tokens, ref_tokens[s]) and np.array_equal(got_domains, ref_domains[s])
            assert docs == [[int(order[p]), int(starts[p]) - s.start] for p in range(first, last)], i
