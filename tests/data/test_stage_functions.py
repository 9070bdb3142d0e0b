"""The small pure functions inside `lory prepare`'s stages, against slow references."""

import hashlib

import numpy as np

from lory_lightning.data.partition import member_table
from lory_lightning.data.prepare.stage_documents import (BUCKETS, DEDUP_RANGE, bucket_bounds, dedup_ranges, digest_keys,
                                                         later_copies, rows_of)
from lory_lightning.data.prepare.stage_pack import same_domain_fraction
from lory_lightning.data.prepare.work import balanced, mine
from reference_ordering import members


def _digest(i: int) -> np.ndarray:
    return np.frombuffer(hashlib.blake2b(str(i).encode(), digest_size=16).digest(), dtype=np.uint8)


def _later_copies_of(digests: np.ndarray) -> list[int]:
    """later_copies over digests in reading order: rows 0..n-1 as reading positions."""
    keys = digest_keys(digests)
    return later_copies(keys[:, :2], keys[:, 2].astype(np.int64)).tolist()


def test_later_copies_are_every_row_but_the_first_of_each_digest():
    rng = np.random.default_rng(0)
    texts = rng.integers(0, 300, size=2000)  # many repeats, in random places
    digests = np.stack([_digest(int(t)) for t in texts])
    seen, expected = set(), []
    for i, t in enumerate(texts):  # the slow reference: a set of texts in reading order
        if int(t) in seen:
            expected.append(i)
        seen.add(int(t))
    assert _later_copies_of(digests) == expected
    assert len(expected) == len(texts) - len(set(texts.tolist()))


def test_later_copies_digests_equal_in_one_word_only_are_different():
    a, b = _digest(1), _digest(2)
    half = np.concatenate([a[:8], b[8:]])  # shares its first 8 bytes with a, its last 8 with b
    digests = np.stack([a, half, b, a, np.concatenate([b[:8], a[8:]]), half])
    assert _later_copies_of(digests) == [3, 5]
    assert _later_copies_of(np.zeros((0, 16), dtype=np.uint8)) == []


def test_dedup_by_ranges_over_files_equals_dedup_of_the_whole_corpus():
    """The dedup stage's way: each file's keys sorted and bucketed, each range a slice of every file;
    the union over ranges is the whole corpus's later copies, whatever the number of ranges."""
    rng = np.random.default_rng(1)
    texts = rng.integers(0, 500, size=3000)
    digests = np.stack([_digest(int(t)) for t in texts])
    files = np.split(np.arange(3000), [700, 1900, 1900, 2600])  # one file empty
    first = np.cumsum([0] + [len(f) for f in files])
    keys = [digest_keys(digests[rows]) for rows in files]
    buckets = [bucket_bounds(k[:, 0]) for k in keys]
    assert all(b[0] == 0 and b[-1] == len(k) and np.all(np.diff(b) >= 0) for b, k in zip(buckets, keys))
    whole = _later_copies_of(digests)
    for n in (1, 2, 7, 300):  # ranges
        ranges = dedup_ranges(n * DEDUP_RANGE)
        assert len(ranges) == n
        assert sorted(b for r in ranges for b in r) == list(range(BUCKETS))  # every bucket in one range
        found = []
        for r in ranges:
            parts = [k[b[r.start]:b[r.stop]] for k, b in zip(keys, buckets)]
            found += later_copies(np.concatenate([p[:, :2] for p in parts]),
                                  np.concatenate([p[:, 2].astype(np.int64) + first[f] for f, p in enumerate(parts)])).tolist()
        assert sorted(found) == whole, n


def test_dedup_ranges_follow_the_corpus_size_only():
    assert len(dedup_ranges(0)) == 1 and len(dedup_ranges(DEDUP_RANGE)) == 1
    assert len(dedup_ranges(DEDUP_RANGE + 1)) == 2
    assert len(dedup_ranges(235_000_000)) == 225  # the paper-scale corpus: about a million documents a range
    assert len(dedup_ranges(10 ** 12)) == BUCKETS


def test_rows_of_takes_ascending_rows_and_stops_reading_after_the_last():
    read = []

    def items():
        for i in range(10):
            read.append(i)
            yield f"doc{i}"

    assert list(rows_of(items(), np.array([0, 3, 4]))) == ["doc0", "doc3", "doc4"]
    assert read == [0, 1, 2, 3, 4, 5]  # one past the last wanted row, then it stops
    assert list(rows_of(items(), np.array([], dtype=np.int64))) == []
    assert list(rows_of(iter(["a", "b"]), np.array([0, 1]))) == ["a", "b"]


def test_member_table_matches_members():
    labels = np.array([2, 0, 2, 3, 0, 2])
    rows, bounds = member_table(labels)
    assert rows.tolist() == [1, 4, 0, 2, 5, 3] and bounds.tolist() == [0, 2, 2, 5, 6]
    assert [g.tolist() for g in members(labels)] == [[1, 4], [], [0, 2, 5], [3]]


def _piece(domains: list[int]) -> dict:  # what pack writes of a piece's domains
    d = np.array(domains)
    return {"documents": len(d), "same_domain_steps": int(np.sum(d[1:] == d[:-1])),
            "ends": [int(d[0]), int(d[-1])] if len(d) else None}


def test_same_domain_fraction_of_pieces_is_the_joined_streams():
    assert same_domain_fraction([_piece([0, 0, 1, 1, 1])]) == 0.75
    assert same_domain_fraction([_piece([3])]) == 1.0 and same_domain_fraction([_piece([])]) == 1.0
    rng = np.random.default_rng(0)
    streams = [rng.integers(0, 3, size=n).tolist() for n in (5, 0, 1, 7, 0, 4)]  # empty pieces between
    joined = np.concatenate(streams)
    assert same_domain_fraction([_piece(s) for s in streams]) == np.mean(joined[1:] == joined[:-1])


def test_balanced_gives_each_key_to_one_task_largest_first_to_the_least_loaded():
    sizes = np.array([28052, 42919, 28052])  # the partitions that round robin split 71k / 28k
    assert balanced(sizes, 0, 2) == [1] and balanced(sizes, 1, 2) == [0, 2]  # 43k and 56k
    assert [list(mine(3, r, 2)) for r in range(2)] == [[0, 2], [1]]
    rng = np.random.default_rng(0)
    for n, tasks in ((1, 1), (7, 3), (50, 4), (3, 8)):
        sizes = rng.integers(0, 1000, n)
        owned = [balanced(sizes, r, tasks) for r in range(tasks)]
        assert sorted(k for keys in owned for k in keys) == list(range(n))  # each key exactly once
        loads = [int(sizes[keys].sum()) for keys in owned]
        assert max(loads) - min(loads) <= sizes.max()  # LPT: the spread is at most one key
