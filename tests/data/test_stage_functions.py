"""The small pure functions inside `lory prepare`'s stages, against slow references."""

import hashlib

import numpy as np

from lory_lightning.data.partition import member_table, members
from lory_lightning.data.stages import balanced, first_copies, mine, rows_of, same_domain_fraction


def _digest(i: int) -> np.ndarray:
    return np.frombuffer(hashlib.blake2b(str(i).encode(), digest_size=16).digest(), dtype=np.uint8)


def test_first_copies_keeps_the_first_row_of_every_digest():
    rng = np.random.default_rng(0)
    texts = rng.integers(0, 300, size=2000)  # many repeats, in random places
    digests = np.stack([_digest(int(t)) for t in texts])
    seen, expected = set(), []
    for t in texts:  # the slow reference: a set of texts in reading order
        expected.append(int(t) not in seen)
        seen.add(int(t))
    assert first_copies(digests).tolist() == expected
    assert first_copies(digests).sum() == len(set(texts.tolist()))


def test_first_copies_digests_equal_in_one_word_only_are_different():
    a, b = _digest(1), _digest(2)
    half = np.concatenate([a[:8], b[8:]])  # shares its first 8 bytes with a, its last 8 with b
    digests = np.stack([a, half, b, a, np.concatenate([b[:8], a[8:]]), half])
    assert first_copies(digests).tolist() == [True, True, True, False, True, False]
    assert first_copies(np.zeros((0, 16), dtype=np.uint8)).tolist() == []


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


def test_same_domain_fraction():
    assert same_domain_fraction(np.array([0, 0, 1, 1, 1], dtype=np.uint8)) == 0.75
    assert same_domain_fraction(np.array([3], dtype=np.uint8)) == 1.0


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
