"""Partitioned similarity ordering: partitions of bounded size that follow the clusters, the exact
global order with one partition, and what near-copies in two partitions become."""

import numpy as np
import pytest

from lory_lightning.data.embed import tfidf_svd_embed
from lory_lightning.data.ordering import KnnParams, close_beyond_k, greedy_path, knn, near_duplicates, random_order
from lory_lightning.data.partition import assign, cut, main_direction, part_sizes, spherical_kmeans
from lory_lightning.data.rowfile import JoinedRows, RowFile
from reference_ordering import centroid_path, members, order_documents, partition, split_oversized
from lory_lightning.data.prepare import PrepareConfig


def clusters(sizes, dim=16, seed=0, spread=0.15):
    """Unit rows around len(sizes) random directions, shuffled; and each row's cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim))
    x = np.concatenate([c + spread * np.linalg.norm(c) * rng.normal(size=(n, dim)) for c, n in zip(centres, sizes)])
    truth = np.repeat(np.arange(len(sizes)), sizes)
    perm = rng.permutation(len(x))
    x = x[perm] / np.linalg.norm(x[perm], axis=1, keepdims=True)
    return x.astype(np.float32), truth[perm]


def test_a_corpus_within_the_size_is_one_partition():
    x, _ = clusters([30, 30])
    assert partition(x, 60, seed=0).tolist() == [0] * 60
    with pytest.raises(ValueError, match="partition_size must be >= 2 documents, got 1"):
        partition(x, 1, seed=0)
    with pytest.raises(ValueError, match="partition_size must be >= 2 documents, got 1"):
        PrepareConfig(partition_size=1)


def test_partitions_follow_the_clusters_and_respect_the_size():
    x, truth = clusters([50] * 6)
    labels = partition(x, 60, seed=1)
    assert labels.max() + 1 == 6 and np.bincount(labels).max() <= 60
    for p in range(6):  # each partition is one cluster, whole
        assert len(set(truth[labels == p])) == 1
    assert np.array_equal(labels, partition(x, 60, seed=1))  # seeded


def test_an_oversized_cluster_is_cut_into_equal_runs_along_its_main_direction():
    t = np.linspace(-1, 1, 10)
    x = np.stack([np.ones(10), t, np.zeros(10)], axis=1)  # points along a line, shuffled
    perm = np.random.default_rng(0).permutation(10)
    labels = split_oversized(x[perm], np.zeros(10, dtype=np.int64), 4)
    assert np.bincount(labels).tolist() == [4, 3, 3]
    along = t[perm]
    runs = [sorted(along[labels == p]) for p in range(3)]
    assert runs[0][-1] < runs[1][0] and runs[1][-1] < runs[2][0] or \
        runs[0][0] > runs[1][-1] and runs[1][0] > runs[2][-1]  # contiguous runs, neighbours together


def test_main_direction_is_the_first_right_singular_vector_of_the_centred_rows_in_any_batch_size():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 6)) * np.array([5.0, 1, 1, 1, 1, 1]) + 3.0  # off-centre, one long axis
    x = (x @ np.linalg.qr(rng.normal(size=(6, 6)))[0]).astype(np.float32)  # the axis rotated
    rows = np.sort(rng.choice(500, 300, replace=False))
    centred = x[rows].astype(np.float64) - x[rows].astype(np.float64).mean(axis=0)
    reference = np.linalg.svd(centred, full_matrices=False)[2][0]
    for batch in (7, 64, 1000):
        d = main_direction(x, rows, batch)
        assert abs(abs(d @ reference) - 1) < 1e-9 and d[np.argmax(np.abs(d))] > 0  # same axis, sign by the data
    labels = np.zeros(500, dtype=np.int64)
    assert np.array_equal(split_oversized(x, labels, 100, batch=7), split_oversized(x, labels, 100))


def test_kmeans_assigns_to_the_nearest_unit_centroid():
    x, truth = clusters([20, 20, 20])
    c = spherical_kmeans(x, 3, seed=0)
    np.testing.assert_allclose(np.linalg.norm(c, axis=1), 1.0, atol=1e-5)
    labels = assign(x, c)
    assert np.array_equal(labels, np.argmax(x @ c.T, axis=1))
    assert all(len(set(truth[labels == k])) == 1 for k in range(3))
    with pytest.raises(ValueError, match="k=61 for 60 rows"):
        spherical_kmeans(x, 61, seed=0)


def test_the_centroid_path_walks_neighbouring_partitions_in_turn():
    # three groups along an arc: A - B - C; the walk starts at an end and passes B between A and C
    angles = {0: 0.0, 1: 0.6, 2: 1.2}
    x = np.array([[np.cos(angles[g] + d), np.sin(angles[g] + d)] for g in (0, 1, 2) for d in (-0.05, 0.0, 0.05)])
    labels = np.repeat([0, 1, 2], 3)
    assert centroid_path(x, labels).tolist() in ([0, 1, 2], [2, 1, 0])
    assert centroid_path(x, np.zeros(9, dtype=np.int64)).tolist() == [0]


@pytest.mark.parametrize("order", ["similarity", "random"])
def test_one_partition_gives_exactly_the_global_order(order):
    x, _ = clusters([40, 40, 40], seed=3)
    x[5] = x[6]  # a near-copy pair
    params, threshold = KnnParams(k=5, n_trees=20, seed=2), 0.99
    nbrs, sims = knn(x, params)
    drop = near_duplicates(nbrs, sims, threshold, close_beyond_k(x, nbrs, sims, threshold, params))
    expected = greedy_path(nbrs, ~drop) if order == "similarity" else random_order(~drop, params.seed)
    got, got_drop, parts = order_documents(x, params, threshold, order, partition_size=120)
    assert parts == 1 and np.array_equal(got, expected) and np.array_equal(got_drop, drop) and drop[6]


def test_partitioned_order_visits_each_kept_document_once_partition_by_partition():
    x, truth = clusters([50] * 6, seed=4)
    got, drop, parts = order_documents(x, KnnParams(k=5, n_trees=20), 0.99, "similarity", partition_size=60)
    assert parts == 6 and sorted(got.tolist()) == np.flatnonzero(~drop).tolist()
    changes = np.count_nonzero(truth[got[1:]] != truth[got[:-1]])
    assert changes == 5  # one cluster after another: five steps between partitions, none inside
    random, _, _ = order_documents(x, KnnParams(k=5, n_trees=20), 0.99, "random", partition_size=60)
    assert sorted(random.tolist()) == sorted(got.tolist()) and np.count_nonzero(truth[random[1:]] != truth[random[:-1]]) > 100


def test_near_copies_in_two_partitions_are_both_kept(monkeypatch):
    import reference_ordering

    x, truth = clusters([30, 30], seed=5)
    a, b = np.flatnonzero(truth == 0)[:2]
    x[b] = x[a]  # an exact pair in embedding space
    got, drop, _ = order_documents(x, KnnParams(k=5, n_trees=20), 0.99, "similarity", partition_size=60)
    assert drop[max(a, b)] and not drop[min(a, b)]  # one partition: the later copy is dropped
    split = np.zeros(60, dtype=np.int64)
    split[b] = 1  # the pair on two sides of a boundary
    monkeypatch.setattr(reference_ordering, "partition", lambda x, size, seed: split)
    got, drop, parts = order_documents(x, KnnParams(k=5, n_trees=20), 0.99, "similarity", partition_size=59)
    assert parts == 2 and not drop[a] and not drop[b]  # documented: not seen across partitions


def test_the_embedder_fit_on_a_sample_of_all_documents_is_the_full_fit():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(300)]
    texts = [" ".join(rng.choice(words[(d % 3) * 100:(d % 3 + 1) * 100], 40)) for d in range(90)]
    full = tfidf_svd_embed(texts, dim=8, seed=1)
    np.testing.assert_allclose(tfidf_svd_embed(texts, dim=8, seed=1, fit_sample=90), full, atol=1e-5)
    sampled = tfidf_svd_embed(texts, dim=8, seed=1, fit_sample=30)
    np.testing.assert_allclose(np.linalg.norm(sampled, axis=1), 1.0, atol=1e-5)
    topic = np.arange(90) % 3
    sims = sampled @ sampled.T
    same, other = sims[topic[:, None] == topic[None, :]].mean(), sims[topic[:, None] != topic[None, :]].mean()
    assert same > other + 0.3  # a map fit on a third of the documents still separates the topics


def test_members_groups_rows_by_label_in_one_sort():
    labels = np.array([2, 0, 2, 3, 0, 2])
    assert [g.tolist() for g in members(labels)] == [[1, 4], [], [0, 2, 5], [3]]  # label 1 is empty
    assert members(np.zeros(0, dtype=np.int64)) == []


def test_row_file_reads_slices_single_rows_and_index_arrays(tmp_path):
    x = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    np.save(tmp_path / "x.npy", x)
    rows = RowFile(tmp_path / "x.npy")
    assert len(rows) == 50 and rows.shape == (50, 3)
    idx = np.array([49, 0, 7, 7, 13, 2, 30, 31, 32, 40, 1])  # unsorted, repeated, more than a block
    assert np.array_equal(rows[idx], x[idx]) and np.array_equal(rows[5:17], x[5:17])
    assert np.array_equal(rows[3], x[3]) and rows[np.array([], dtype=np.int64)].shape == (0, 3)


def test_joined_rows_read_files_end_to_end_as_one_array(tmp_path):
    x = np.arange(41 * 2, dtype=np.float32).reshape(41, 2)
    files = []
    for i, (a, b) in enumerate([(0, 10), (10, 10), (10, 33), (33, 41)]):  # the second file empty
        x[a:b].tofile(tmp_path / f"{i}.f32")  # raw rows, as encode writes them
        files.append(RowFile(tmp_path / f"{i}.f32", np.float32, (b - a, 2)))
    with JoinedRows(files) as rows:
        rows.OPEN_FILES = 2  # files closed and opened again as they are read
        assert rows.shape == (41, 2) and len(rows) == 41
        for a, b in [(0, 41), (5, 12), (10, 10), (9, 11), (33, 41), (40, 41), (12, 30), (41, 41)]:
            assert np.array_equal(rows[a:b], x[a:b]), (a, b)
        idx = np.array([40, 0, 10, 9, 33, 32, 32, 5])
        assert np.array_equal(rows[idx], x[idx])
        assert len(rows.open) <= 2 and sum(f.fd is not None for f in files) <= 2


def test_cutting_cluster_by_cluster_gives_split_oversizeds_partitions():
    """The split stage cuts one cluster per task (``cut``, numbered by ``part_sizes``); together that
    is ``split_oversized`` over the whole corpus."""
    x, _ = clusters([80, 80, 80, 80, 80])
    labels = np.random.default_rng(3).integers(0, 6, size=400)
    labels[labels == 4] = 2  # cluster 4 empty, cluster 2 oversized
    whole = split_oversized(x, labels, 50)
    groups = members(labels)
    parts = [p for g in groups for p in cut(x, g, 50)]
    assert [len(p) for p in parts] == [n for sizes in part_sizes(np.array([len(g) for g in groups]), 50) for n in sizes]
    assert len(parts) == whole.max() + 1
    for p, rows in enumerate(parts):
        assert np.array_equal(rows, np.flatnonzero(whole == p)), p
