import numpy as np
import pytest

from lory_lightning.data.packing import documents_in, num_sequences, pack_stream, sequence_slice


def test_pack_stream_concatenates_in_path_order_with_eod_and_domains():
    tokens = np.array([1, 2, 3, 10, 11, 20], dtype=np.uint16)  # docs: [1,2,3], [10,11], [20]
    offsets, lengths = np.array([0, 3, 5]), np.array([3, 2, 1])
    domains = np.array([0, 1, 2], dtype=np.uint8)
    order = np.array([2, 0, 1])
    out, dom = np.zeros(9, np.uint16), np.zeros(9, np.uint8)
    starts = pack_stream(order, offsets, lengths, domains, tokens, 0, out, dom)
    assert out.tolist() == [20, 0, 1, 2, 3, 0, 10, 11, 0]
    assert dom.tolist() == [2, 2, 0, 0, 0, 0, 1, 1, 1]
    assert starts.tolist() == [0, 2, 6, 9]
    with pytest.raises(ValueError, match="must have 9 positions"):
        pack_stream(order, offsets, lengths, domains, tokens, 0, np.zeros(8, np.uint16), dom)


def test_sequences_overlap_by_one_so_every_token_is_a_target_once():
    n, tail = num_sequences(stream_len=10, seq_len=3)
    assert (n, tail) == (3, 0)  # [0:4], [3:7], [6:10]
    targets = [t for i in range(n) for t in range(10)[sequence_slice(i, 3)][1:]]
    assert targets == list(range(1, 10))
    assert num_sequences(12, 3) == (3, 2)
    assert num_sequences(3, 3) == (0, 3)


def test_documents_in_a_sequence():
    starts = np.array([0, 2, 6, 9])
    assert documents_in(0, 3, starts) == (0, 2)  # positions 0..3 touch docs at path 0 and 1
    assert documents_in(1, 3, starts) == (1, 3)  # positions 3..6


def test_unigram_baseline_matches_a_hand_count():
    from lory_lightning.data.stats import unigram_counts, unigram_ppl

    tokens = np.array([1, 1, 2, 1, 3], dtype=np.uint16)  # train doc [1, 1, 2]; eval doc [1, 3]
    offsets, lengths = np.array([0, 3]), np.array([3, 2])
    got_counts = unigram_counts(tokens, offsets, lengths, np.array([0]), 4, 0)
    ppl = unigram_ppl(got_counts, tokens, offsets, lengths, np.array([1]), np.array([0, 1]), 0)
    counts = np.array([1 + 1, 1 + 2, 1 + 1, 1 + 0])  # add-one, eod counted once for the train doc
    assert got_counts.tolist() == counts.tolist()
    p = counts / counts.sum()
    expected = np.exp(-(np.log(p[1]) + np.log(p[3]) + np.log(p[0])) / 3)
    assert ppl == {1: pytest.approx(expected)}
