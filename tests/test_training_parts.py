"""Training parts against brute force: miners, triplet and distillation losses, P x K sampler."""
from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from facenet_cli.errors import UsageError
from facenet_cli.training import (
    OpenFaceTripletMiner, PKBatchSampler, batch_hard_miner, distillation_loss, make_miner,
    semihard_miner, triplet_loss,
)

ALPHA = 0.2


# ---- brute force on plain Python numbers ------------------------------------------------

def sq_dist_table(emb: torch.Tensor) -> list[list[float]]:
    vecs = [[float(v) for v in row] for row in F.normalize(emb.double(), dim=1)]
    return [[sum((x - y) ** 2 for x, y in zip(u, v)) for v in vecs] for u in vecs]


def all_triplets(labels):
    n = len(labels)
    for a, p, q in itertools.product(range(n), repeat=3):
        if a != p and labels[a] == labels[p] and labels[a] != labels[q]:
            yield a, p, q


def well_separated(d, labels, alpha=ALPHA, eps=1e-4):
    """No triplet sits within eps of a decision boundary (float32 vs float64 cannot disagree)."""
    for a, p, n in all_triplets(labels):
        m = d[a][n] - d[a][p]
        if abs(m) < eps or abs(m - alpha) < eps:
            return False
    return True


def batch(seed: int, people=(0, 0, 0, 1, 1, 2, 2, 2, 3), dim=4, spread=0.9):
    """Small clustered batch: people near their own random centre, so some triplets are easy."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(people)
    centres = F.normalize(torch.randn(int(labels.max()) + 1, dim, generator=g), dim=1)
    emb = centres[labels] + spread * torch.randn(len(labels), dim, generator=g) / math.sqrt(dim)
    return F.normalize(emb, dim=1), labels


def good_batches(count=6):
    out, seed = [], 0
    while len(out) < count:
        emb, labels = batch(seed)
        if well_separated(sq_dist_table(emb), labels.tolist()):
            out.append((emb, labels))
        seed += 1
    return out


BATCHES = good_batches()


def as_set(triplets):
    return sorted(zip(*(t.tolist() for t in triplets)))


# ---- miners ------------------------------------------------------------------------------

@pytest.mark.parametrize("emb,labels", BATCHES)
def test_openface_miner_follows_the_rule(emb, labels):
    d, lab = sq_dist_table(emb), labels.tolist()
    valid = {}
    for a, p in itertools.combinations(range(len(lab)), 2):
        if lab[a] == lab[p]:
            negs = {n for n in range(len(lab)) if lab[n] != lab[a] and d[a][n] - d[a][p] < ALPHA}
            if negs:
                valid[(a, p)] = negs
    miner = OpenFaceTripletMiner(ALPHA, torch.Generator().manual_seed(3))
    triplets = as_set(miner(emb, labels))
    pairs = [(a, p) for a, p, _ in triplets]
    assert sorted(pairs) == sorted(valid)  # every pair with a valid negative, exactly once
    for a, p, n in triplets:
        assert n in valid[(a, p)]


def test_openface_miner_draws_every_valid_negative_and_is_reproducible():
    emb, labels = BATCHES[0]
    d, lab = sq_dist_table(emb), labels.tolist()
    runs = [as_set(OpenFaceTripletMiner(ALPHA, torch.Generator().manual_seed(s))(emb, labels))
            for s in range(60)]
    assert runs[0] == as_set(OpenFaceTripletMiner(ALPHA, torch.Generator().manual_seed(0))(emb, labels))
    seen = {t for run in runs for t in run}
    expected = {(a, p, n) for a, p, n in all_triplets(lab)
                if a < p and d[a][n] - d[a][p] < ALPHA}
    assert seen == expected


def test_openface_miner_handcrafted():
    # On a circle: person 0 at angles 0 and 10 degrees, person 1 at 12 and 180 degrees.
    deg = torch.tensor([0.0, 10.0, 12.0, 180.0]) * math.pi / 180
    emb = torch.stack([deg.cos(), deg.sin()], dim=1)
    labels = torch.tensor([0, 0, 1, 1])
    a, p, n = OpenFaceTripletMiner(ALPHA)(emb, labels)
    # Pair (0,1): negative 2 is within the margin, 3 is not. Pair (2,3): d(2,3) ~ 4, so both
    # of person 0 are "within the margin" (hard negatives are allowed by OpenFace's rule).
    got = dict(zip(zip(a.tolist(), p.tolist()), n.tolist()))
    assert set(got) == {(0, 1), (2, 3)}
    assert got[(0, 1)] == 2 and got[(2, 3)] in (0, 1)


def test_openface_miner_without_pairs_returns_empty():
    emb = F.normalize(torch.randn(4, 8), dim=1)
    a, p, n = OpenFaceTripletMiner(ALPHA)(emb, torch.tensor([0, 1, 2, 3]))
    assert len(a) == len(p) == len(n) == 0


@pytest.mark.parametrize("emb,labels", BATCHES)
def test_semihard_equals_brute_force(emb, labels):
    d, lab = sq_dist_table(emb), labels.tolist()
    expected = brute_semihard(d, lab)
    assert expected  # the batches are built to have some
    assert as_set(semihard_miner(ALPHA)(emb, labels)) == expected


@pytest.mark.parametrize("emb,labels", BATCHES)
def test_batch_hard_equals_brute_force(emb, labels):
    d, lab = sq_dist_table(emb), labels.tolist()
    expected = brute_batch_hard(d, lab)
    assert as_set(batch_hard_miner()(emb, labels)) == expected


def brute_semihard(d, lab):
    return sorted((a, p, n) for a, p, n in all_triplets(lab) if d[a][p] < d[a][n] and d[a][n] - d[a][p] <= ALPHA)


def brute_batch_hard(d, lab):
    expected = []
    for a in range(len(lab)):
        pos = [p for p in range(len(lab)) if p != a and lab[p] == lab[a]]
        neg = [n for n in range(len(lab)) if lab[n] != lab[a]]
        if pos and neg:
            expected.append((a, max(pos, key=lambda p: d[a][p]), min(neg, key=lambda n: d[a][n])))
    return expected


@pytest.mark.parametrize("emb,labels", BATCHES[:3])
def test_make_miner_by_name_equals_brute_force(emb, labels):
    """What `facenet train --miner NAME` gets is the rule its name promises."""
    d, lab = sq_dist_table(emb), labels.tolist()
    assert as_set(make_miner("semihard", ALPHA)(emb, labels)) == brute_semihard(d, lab)
    assert as_set(make_miner("batch-hard", ALPHA)(emb, labels)) == brute_batch_hard(d, lab)
    openface = as_set(make_miner("openface", ALPHA, seed=5)(emb, labels))
    assert openface == as_set(OpenFaceTripletMiner(ALPHA, torch.Generator().manual_seed(5))(emb, labels))
    assert {(a, p) for a, p, _ in openface} == {(a, p) for a, p, n in all_triplets(lab)
                                               if a < p and d[a][n] - d[a][p] < ALPHA}


def test_make_miner_names_are_the_clis_choices():
    from facenet_cli.choices import Miner, values
    from facenet_cli.training import MINERS

    assert tuple(MINERS) == values(Miner)
    with pytest.raises(UsageError, match="openface, semihard, batch-hard"):
        make_miner("hardest")


def test_miners_do_not_track_gradients():
    emb, labels = BATCHES[0]
    emb = emb.clone().requires_grad_(True)
    for miner in (OpenFaceTripletMiner(ALPHA), semihard_miner(ALPHA), batch_hard_miner()):
        assert not any(t.requires_grad for t in miner(emb, labels))


# ---- losses ------------------------------------------------------------------------------

def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_triplet_loss_is_facenets_mean_hinge():
    # Squared distances on the unit circle: 90 degrees apart -> 2, opposite -> 4.
    emb = torch.tensor([unit(0), unit(90), unit(180), unit(270)], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    a, p, n = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 1, 0, 0]), torch.tensor([2, 3, 3, 2])
    # d(a,p) = 2 for all; d(a,n) = 4, 2, 4, 2 -> hinge 0, 0.2, 0, 0.2 -> mean 0.1
    # (pml's default reducer would say 0.2: it averages the non-zero ones only).
    loss = triplet_loss(ALPHA)(emb, labels, indices_tuple=(a, p, n))
    assert loss.item() == pytest.approx(0.1, abs=1e-6)
    loss.backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all()
    # Scale does not matter: distances are taken between normalised embeddings.
    scaled = triplet_loss(ALPHA)(3 * emb.detach(), labels, indices_tuple=(a, p, n))
    assert scaled.item() == pytest.approx(0.1, abs=1e-6)


def test_triplet_loss_matches_definition_on_random_triplets():
    emb, labels = BATCHES[1]
    d = sq_dist_table(emb)
    trip = list(all_triplets(labels.tolist()))
    expected = sum(max(0.0, d[a][p] - d[a][n] + ALPHA) for a, p, n in trip) / len(trip)
    idx = tuple(torch.tensor(col) for col in zip(*trip))
    assert triplet_loss(ALPHA)(emb, labels, indices_tuple=idx).item() == pytest.approx(expected, abs=1e-5)


def test_triplet_loss_without_triplets_is_zero_and_differentiable():
    emb = torch.randn(4, 8, requires_grad=True)
    empty = torch.tensor([], dtype=torch.long)
    loss = triplet_loss(ALPHA)(emb, torch.tensor([0, 1, 2, 3]), indices_tuple=(empty, empty, empty))
    assert loss.item() == 0.0
    loss.backward()


def test_distillation_loss_values():
    teacher = torch.tensor([unit(0), unit(90)])
    assert distillation_loss(teacher, 5 * teacher).item() == pytest.approx(0.0, abs=1e-6)
    orthogonal = torch.tensor([unit(90), unit(180)])
    assert distillation_loss(orthogonal, teacher).item() == pytest.approx(1.0, abs=1e-6)
    assert distillation_loss(-teacher, teacher).item() == pytest.approx(2.0, abs=1e-6)
    # With a centre the student copies the direction of teacher - centre.
    centre = torch.tensor([10.0, 10.0])
    student = torch.tensor([unit(0), unit(90)], requires_grad=True)
    t = centre + 0.5 * torch.tensor([unit(0), unit(90)])
    t.requires_grad_(True)
    loss = distillation_loss(student, t, center=centre.tolist())
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    distillation_loss(torch.tensor([unit(45), unit(45)], requires_grad=True), t, centre).backward()
    assert t.grad is None  # the teacher is a fixed target


# ---- sampler -----------------------------------------------------------------------------

LABELS = [0] * 5 + [1] * 4 + [2] * 3 + [3] * 8 + [4] * 4 + [5] * 1 + [6] * 6 + [7] * 4
OWNER = dict(enumerate(LABELS))


def test_pk_sampler_gives_exact_pk_batches():
    p, k = 3, 4
    sampler = PKBatchSampler(LABELS, p, k, seed=1, batches_per_epoch=20)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 20
    eligible = {lab for lab, c in Counter(LABELS).items() if c >= k}
    uses = Counter()
    for b in batches:
        assert len(b) == p * k
        blocks = [b[i * k:(i + 1) * k] for i in range(p)]
        people = [OWNER[blk[0]] for blk in blocks]
        assert len(set(people)) == p and set(people) <= eligible
        for person, blk in zip(people, blocks):
            assert len(set(blk)) == k and all(OWNER[i] == person for i in blk)
        uses.update(people)
    assert max(uses.values()) - min(uses.values()) <= 1  # people recur evenly


def test_pk_sampler_is_reproducible_per_epoch():
    a = PKBatchSampler(LABELS, 2, 3, seed=7)
    b = PKBatchSampler(LABELS, 2, 3, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert len(first) == len({lab for lab, c in Counter(LABELS).items() if c >= 3}) // 2


def test_pk_sampler_refuses_too_few_people():
    with pytest.raises(UsageError):
        PKBatchSampler(LABELS, 7, 4)
    with pytest.raises(UsageError):
        PKBatchSampler(LABELS, 2, 1)


# ---- View 1 validation folds ------------------------------------------------------------

def test_view1_folds_of_a_small_file_are_never_empty(tmp_path, lfw_dir):
    """4 + 4 pairs of LFW's pairsDevTest.txt: 4 folds, each with one pair of each kind, and a
    cross-validated accuracy that is a number (10 folds left 6 empty: nan, "Mean of empty slice")."""
    import warnings

    import numpy as np

    from facenet_cli.evaluate.lfw import read_pairs
    from facenet_cli.training.data import view1_folds
    from facenet_cli.evaluate.verification import PairDistances, evaluate_distances

    lines = (lfw_dir / "pairsDevTest.txt").read_text(encoding="utf-8").splitlines()
    small = tmp_path / "pairsDevTest-8.txt"
    small.write_text("\n".join(["4", *lines[1:5], *lines[501:505]]) + "\n", encoding="utf-8")
    pairs = read_pairs(small)
    folds = view1_folds(pairs)
    assert sorted(folds[pairs.same].tolist()) == sorted(folds[~pairs.same].tolist()) == [0, 1, 2, 3]

    distance = np.where(pairs.same, 0.1, 0.5) + np.arange(len(pairs)) * 1e-3  # separable
    test = PairDistances(distance, pairs.same.copy(), np.zeros(len(pairs), bool), [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "Mean of empty slice" would fail here
        result = evaluate_distances(test, folds)
    assert len(result.folds) == 4 and result.accuracy_mean == 1.0

    full = view1_folds(read_pairs(lfw_dir / "pairsDevTest.txt"))
    assert np.bincount(full).tolist() == [100] * 10  # a full file keeps ten folds of 50 + 50
