import numpy as np
import pytest

from lory_lightning.data.ordering import KnnParams, greedy_path, knn, near_duplicates, random_order


def clustered(n_per=20, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(3, dim)) * 5
    x = np.concatenate([c + rng.normal(size=(n_per, dim)) for c in centers])
    labels = np.repeat(np.arange(3), n_per)
    perm = rng.permutation(len(x))
    x, labels = x[perm], labels[perm]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), labels


def test_knn_is_exact_on_small_data_and_deterministic():
    x, _ = clustered()
    nbrs, sims = knn(x, KnnParams(k=5, n_trees=50, seed=3))
    brute = x @ x.T
    np.fill_diagonal(brute, -np.inf)
    expected = np.argsort(-brute, axis=1)[:, :5]
    assert (nbrs == expected).mean() > 0.95  # approximate, but near-exact on 60 points
    np.testing.assert_allclose(sims, np.take_along_axis(brute, nbrs, 1), atol=1e-5)
    nbrs2, sims2 = knn(x, KnnParams(k=5, n_trees=50, seed=3))
    assert np.array_equal(nbrs, nbrs2) and np.array_equal(sims, sims2)


def test_greedy_path_visits_every_kept_document_once_and_follows_similarity():
    x, labels = clustered()
    nbrs, _ = knn(x, KnnParams(k=5))
    order = greedy_path(nbrs)
    assert sorted(order.tolist()) == list(range(60))
    same = (labels[order[1:]] == labels[order[:-1]]).mean()
    rand = random_order(np.ones(60, dtype=bool), 0)
    same_random = (labels[rand[1:]] == labels[rand[:-1]]).mean()
    assert same > 0.75 and same_random < 0.5  # random stays in a cluster ~1/3 of the time
    keep = np.ones(60, dtype=bool)
    keep[[0, 5, 7]] = False
    order = greedy_path(nbrs, keep)
    assert sorted(order.tolist()) == sorted(set(range(60)) - {0, 5, 7})


def test_greedy_path_on_a_hand_made_graph():
    # A chain 0-1-2-3 and an island 4; in-degrees: 0:1, 1:2, 2:2, 3:1, 4:0 -> start at 4, jump to 0.
    nbrs = np.array([[1, -1], [0, 2], [1, 3], [2, -1], [-1, -1]])
    assert greedy_path(nbrs).tolist() == [4, 0, 1, 2, 3]


def test_near_duplicates_drop_the_later_copy_only():
    nbrs = np.array([[1, 2], [0, 2], [1, 0], [0, 1]])
    sims = np.array([[0.995, 0.5], [0.995, 0.992], [0.992, 0.5], [0.2, 0.1]], dtype=np.float32)
    drop = near_duplicates(nbrs, sims, 0.99)
    # 1 duplicates 0 -> dropped; 2 duplicates only 1, which is dropped itself -> kept.
    assert drop.tolist() == [False, True, False, False]


def test_random_order_is_seeded_permutation_of_kept():
    keep = np.array([True, False, True, True, True])
    a, b = random_order(keep, 1), random_order(keep, 1)
    assert np.array_equal(a, b) and sorted(a.tolist()) == [0, 2, 3, 4]


def test_knn_params_validated():
    with pytest.raises(ValueError, match="knn k"):
        KnnParams(k=0)


def test_a_cluster_larger_than_k_leaves_no_pair_above_the_threshold():
    # 25 near-copies (all pairwise cosines >= 0.99) and 40 unrelated documents; k = 10 neighbours.
    from lory_lightning.data.ordering import close_beyond_k

    rng = np.random.default_rng(0)
    base = rng.normal(size=32)
    copies = base + 0.06 * rng.normal(size=(25, 32)) * np.linalg.norm(base) / np.sqrt(32)
    x = np.concatenate([copies, rng.normal(size=(40, 32))])
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    cos = x @ x.T
    assert cos[:25, :25].min() > 0.99
    params = KnnParams(k=10, n_trees=50, seed=0)
    nbrs, sims = knn(x, params)
    within_k = near_duplicates(nbrs, sims, 0.99)
    kept = np.flatnonzero(~within_k)
    assert (np.triu(cos[np.ix_(kept, kept)], 1) > 0.99).sum() > 0  # the k-neighbour view misses pairs
    extra = close_beyond_k(x, nbrs, sims, 0.99, params)
    assert set(extra) <= set(range(25)) and extra  # only the cluster's rows are saturated
    drop = near_duplicates(nbrs, sims, 0.99, extra)
    kept = np.flatnonzero(~drop)
    assert (np.triu(cos[np.ix_(kept, kept)], 1) > 0.99).sum() == 0
    assert drop[:25].sum() == 24 and not drop[25:].any()  # one copy kept, nothing else dropped


def test_a_pair_exactly_at_the_threshold_is_kept_and_above_it_dropped():
    nbrs = np.array([[1], [0], [0]])
    sims = np.array([[0.99], [0.99], [0.5]], dtype=np.float32)
    assert not near_duplicates(nbrs, sims, float(np.float32(0.99))).any()  # "above", not "at"
    assert near_duplicates(nbrs, sims, 0.98).tolist() == [False, True, False]
