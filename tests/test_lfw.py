"""LFW verification on synthetic distances whose answers are known by construction, the metrics
against brute force, the real protocol files' parsing, the figures and the `lfw-roc` command."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from facenet_cli.cli import app
from facenet_cli.errors import DataError, UsageError
from facenet_cli.evaluate.lfw import pair_distances, path_key, processed_people, read_comparisons, read_pairs
from facenet_cli.evaluate.report import evaluate_lfw, model_label
from facenet_cli.formats.reps import Reps, RepsWriter, read_reps
from facenet_cli.evaluate.verification import (best_threshold, equal_error_rate, evaluate_distances,
                                      mean_roc, roc_curve, threshold_at_far)

PER_FOLD = 3
# Squared distances of clean matched and mismatched pairs, and the threshold between them.
# Every distance used is a sum of two squares of halves, so float32 embeddings give it exactly.
SAME, DIFF, MIDDLE = 1.0, 9.0, 5.0


def exact_vector(d: float) -> tuple[float, float]:
    """A 2-D point at squared distance `d` from the origin, exact in float32."""
    for a in np.arange(0, 10, 0.5):
        b = np.sqrt(max(d - a * a, 0))
        if a * a + b * b == d and (2 * b).is_integer():
            return (a, b)
    raise ValueError(f"no exact 2-D vector for {d}")


def build(tmp_path, folds, name="pairs.txt", header=None, drop=()):
    """A pairs file and 2-D embeddings giving each pair exactly the distance asked for.

    folds: per fold, (matched distances, mismatched distances). Every image belongs to its
    own pair's people, and each person also has an unused image 99, so dropping a pair's
    image (keys in `drop`) leaves its person known.
    """
    lines = [header or (f"{len(folds)}\t{len(folds[0][0])}" if len(folds) > 1 else f"{len(folds[0][0])}")]
    embeddings: dict[str, tuple] = {}
    origin = (0.0, 0.0)
    for k, (matched, mismatched) in enumerate(folds):
        for i, d in enumerate(matched):
            person = f"{name[:-4]}_S{k}_{i}"
            lines.append(f"{person}\t1\t2")
            embeddings |= {f"{person}/{person}_0001": origin, f"{person}/{person}_0002": exact_vector(d),
                           f"{person}/{person}_0099": origin}
        for i, d in enumerate(mismatched):
            a, b = f"{name[:-4]}_A{k}_{i}", f"{name[:-4]}_B{k}_{i}"
            lines.append(f"{a}\t1\t{b}\t1")
            embeddings |= {f"{a}/{a}_0001": origin, f"{b}/{b}_0001": exact_vector(d),
                           f"{a}/{a}_0099": origin, f"{b}/{b}_0099": origin}
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    keys = [k for k in embeddings if k not in drop]
    return path, keys, [embeddings[k] for k in keys]


def reps_of(*built) -> Reps:
    keys = [k for _, ks, _ in built for k in ks]
    values = [v for _, _, vs in built for v in vs]
    return Reps(paths=[f"/data/aligned/{k}.png" for k in keys], labels=np.zeros(len(keys), np.int64),
                embeddings=np.asarray(values, np.float32), meta={"model": "toy"})


def clean_fold():
    return [SAME] * PER_FOLD, [DIFF] * PER_FOLD


def test_path_key_ignores_root_and_extension():
    assert path_key("/x/y/Aaron_Peirsol/Aaron_Peirsol_0001.png") == "Aaron_Peirsol/Aaron_Peirsol_0001"
    assert path_key("Aaron_Peirsol/Aaron_Peirsol_0001.jpg") == "Aaron_Peirsol/Aaron_Peirsol_0001"
    assert path_key(r"C:\lfw\Aaron_Peirsol\Aaron_Peirsol_0001.png") == "Aaron_Peirsol/Aaron_Peirsol_0001"


def test_perfect_separation(tmp_path):
    built = build(tmp_path, [clean_fold()] * 10)
    result = evaluate_lfw(reps_of(built), built[0], tmp_path / "out")
    assert [f.threshold for f in result.folds] == [MIDDLE] * 10  # midpoint of 1 and 9
    assert [f.accuracy for f in result.folds] == [1.0] * 10
    assert (result.accuracy_mean, result.accuracy_std, result.auc, result.eer) == (1.0, 0.0, 1.0, 0.0)
    assert (result.val_mean, result.val_std, result.far_mean) == (1.0, 0.0, 0.0)
    assert result.missing_pairs == 0 and result.protocol.startswith("View 2")


def test_fold_where_every_threshold_fails(tmp_path):
    # Fold 9 is reversed: its matched pairs are far apart and its mismatched pairs close.
    built = build(tmp_path, [clean_fold()] * 9 + [([DIFF] * PER_FOLD, [SAME] * PER_FOLD)])
    result = evaluate_lfw(reps_of(built), built[0], tmp_path / "out")
    assert [f.accuracy for f in result.folds] == [1.0] * 9 + [0.0]
    assert [f.threshold for f in result.folds] == [MIDDLE] * 10
    assert result.accuracy_mean == pytest.approx(0.9)
    assert result.accuracy_std == pytest.approx(0.3)  # numpy std, ddof=0
    assert result.folds[9].auc == 0.0 and result.folds[0].auc == 1.0
    # The reversed fold puts 3 false accepts among 27 mismatched training pairs of every
    # other fold, so FAR <= 0.001 needs the lowest threshold and VAL is 0 everywhere.
    assert [f.val for f in result.folds] == [0.0] * 10
    assert result.auc == pytest.approx(0.9)
    lines = (tmp_path / "out" / "accuracies.txt").read_text().splitlines()
    assert lines[0] == "fold, threshold, accuracy"
    assert lines[1] == "0, 5.0000, 1.0000"
    assert lines[10] == "9, 5.0000, 0.0000"
    assert lines[11:] == ["", "avg, 0.9000 +/- 0.3000"]


def test_ties_at_the_threshold_predict_same(tmp_path):
    # Fold 0 has one matched and one mismatched pair exactly at 5. For the other folds the
    # training accuracy then ties between candidates 3 and 7; the middle of that run is 5
    # again. In fold 0, distance <= 5 predicts "same": right for the matched pair, wrong
    # for the mismatched one.
    built = build(tmp_path, [([SAME, SAME, MIDDLE], [DIFF, DIFF, MIDDLE])] + [clean_fold()] * 9)
    result = evaluate_lfw(reps_of(built), built[0], tmp_path / "out")
    assert [f.threshold for f in result.folds] == [MIDDLE] * 10
    assert result.folds[0].accuracy == pytest.approx(5 / 6)
    assert [f.accuracy for f in result.folds[1:]] == [1.0] * 9


def test_threshold_choice_is_the_first_best_run():
    same = np.array([True, True, False, False])
    distance = np.array([1.0, 3.0, 2.0, 4.0])
    # Candidates 0, 1.5, 2.5, 3.5, 5 give 2, 3, 2, 3, 2 right: two separate best runs.
    assert best_threshold(distance, same) == 1.5
    # The same accuracy on candidates 1.5 and 2.5 in a row: the middle of the run.
    assert best_threshold(np.array([1.0, 2.0, 3.0, 4.0]), np.array([True, True, False, True])) == 2.5
    assert threshold_at_far(distance, same, far_target=0.5) == 3.5
    assert threshold_at_far(distance, same, far_target=0.0) == 1.5


def test_roc_auc_counts_ties_as_half():
    roc = roc_curve(np.array([1.0, 2.0, 2.0, 3.0]), np.array([True, True, False, False]))
    assert roc.auc == pytest.approx(0.875)  # P(matched closer than mismatched), ties halved
    assert roc.fpr[0] == 0 and roc.tpr[-1] == 1


def test_missing_embeddings_count_as_wrong_answers(tmp_path):
    drop = {"pairs_S3_0/pairs_S3_0_0002", "pairs_A5_1/pairs_A5_1_0001"}
    built = build(tmp_path, [clean_fold()] * 10, drop=drop)
    result = evaluate_lfw(reps_of(built), built[0], tmp_path / "out")
    assert result.missing_pairs == 2
    assert result.missing_images == sorted(drop)
    assert [f.missing_pairs for f in result.folds] == [0, 0, 0, 1, 0, 1, 0, 0, 0, 0]
    assert [f.threshold for f in result.folds] == [MIDDLE] * 10
    assert result.folds[3].accuracy == pytest.approx(5 / 6)
    assert result.folds[5].accuracy == pytest.approx(5 / 6)
    assert result.accuracy_mean == pytest.approx((8 + 2 * 5 / 6) / 10)
    assert json.loads((tmp_path / "out" / "result.json").read_text())["missing_pairs"] == 2
    with pytest.raises(DataError, match="2 images of pairs.txt .* have no embedding"):
        evaluate_lfw(reps_of(built), built[0], tmp_path / "out", on_missing="fail")


def test_person_without_any_embedding_counts_as_wrong_and_is_named(tmp_path):
    """OpenFace's layout made by another tool: a person none of whose images has a face."""
    built = build(tmp_path, [clean_fold()] * 10)
    text = built[0].read_text().replace("pairs_S4_1\t1\t2", "Nobody_Here\t1\t2")
    built[0].write_text(text)
    result = evaluate_lfw(reps_of(built), built[0], tmp_path / "out")
    assert result.missing_people == ["Nobody_Here"]
    assert result.missing_images == ["Nobody_Here/Nobody_Here_0001", "Nobody_Here/Nobody_Here_0002"]
    assert result.missing_pairs == 1 and result.folds[4].missing_pairs == 1
    assert result.folds[4].accuracy == pytest.approx(5 / 6)  # the pair is a wrong answer, not dropped
    assert json.loads((tmp_path / "out" / "result.json").read_text())["missing_people"] == ["Nobody_Here"]


def test_reps_of_other_images_are_refused(tmp_path):
    built = build(tmp_path, [clean_fold()] * 10)
    other = build(tmp_path, [clean_fold()] * 10, name="other.txt")
    with pytest.raises(DataError, match=r"of the 1[0-9]+ images of pairs.txt have no embedding .*come from other images"):
        evaluate_lfw(reps_of(other), built[0], tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_person_aligned_without_a_face_counts_as_missing_not_absent(tmp_path):
    """A person whose every image had no face is in the align report: wrong answers, no error."""
    built = build(tmp_path, [clean_fold()] * 10)
    text = built[0].read_text().replace("pairs_S4_1\t1\t2", "Faceless_One\t1\t2")
    built[0].write_text(text)
    aligned = tmp_path / "aligned"
    aligned.mkdir()
    (aligned / "align-report.csv").write_text(
        "input,status,outputs,detail\nFaceless_One/Faceless_One_0001.jpg,no-face,,no face found\n"
        "Faceless_One/Faceless_One_0002.jpg,no-face,,no face found\n")
    reps = reps_of(built)
    reps.meta["aligned"] = str(aligned)
    result = evaluate_lfw(reps, built[0], tmp_path / "out")
    assert result.missing_pairs == 1
    assert result.missing_images == ["Faceless_One/Faceless_One_0001", "Faceless_One/Faceless_One_0002"]
    assert processed_people(reps) == {"Faceless_One"}


def test_align_report_explains_people_aligned_without_a_face(tmp_path, monkeypatch):
    """Most pair images without an embedding, but the align report says those people were
    aligned and had no face: counted as wrong answers, not refused as other images. The
    aligned folder is named relative to the reps folder (older meta.json), so the answer must
    not depend on the directory the command runs in."""
    built = build(tmp_path, [clean_fold()] * 10)
    keep = [k for k in built[1] if k.startswith("pairs_S0_")]  # only fold 0's matched people have faces
    reps_dir = tmp_path / "reps"
    with RepsWriter(reps_dir, len(keep), 2, {"aligned": "../aligned"}) as writer:
        for key in keep:
            writer.add(f"aligned/{key}.png", key.split("/")[0], built[2][built[1].index(key)])
    aligned = tmp_path / "aligned"
    aligned.mkdir()
    faceless = sorted({k.split("/")[0] for k in built[1]} - {k.split("/")[0] for k in keep})
    (aligned / "align-report.csv").write_text("input,status,outputs,detail\n" + "".join(
        f"{p}/{p}_0001.jpg,no-face,,no face found\n" for p in faceless))
    pairs = read_pairs(built[0])
    results = []
    for cwd in (tmp_path, reps_dir, aligned):
        monkeypatch.chdir(cwd)
        reps = read_reps(reps_dir)
        distances = pair_distances(pairs, reps, processed=processed_people(reps))
        results.append((distances.missing.sum(), len(distances.missing_people)))
    assert results == [(57, 87)] * 3  # every pair but fold 0's three matched ones; 27 + 60 people
    with pytest.raises(DataError, match="come from other images"):
        pair_distances(pairs, read_reps(reps_dir), processed=set())


@pytest.mark.parametrize("content, message", [
    ("hello\nA\t1\t2\n", "not an LFW pairs file"),
    ("", "not an LFW pairs file"),
    ("2\t1\nA\t1\t2\nB\t1\tC\t1\n", "promises 4 pairs in its first line but holds 2"),
    ("1\nA\t1\tB\t1\nC\t1\t2\n", "line 2 should be `name<TAB>n1<TAB>n2` .matched."),
    ("1\nA\t1\t2\nB\tone\tC\t1\n", "line 3 should be `name1<TAB>n1<TAB>name2<TAB>n2` .mismatched."),
    ("1\nA\t0\t2\nB\t1\tC\t1\n", "line 2 should be"),
])
def test_pairs_format_errors(tmp_path, content, message):
    path = tmp_path / "pairs.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        read_pairs(path)


def test_view1_threshold_from_training_pairs(tmp_path):
    train = build(tmp_path, [clean_fold()], name="devtrain.txt")
    test = build(tmp_path, [([SAME, SAME, MIDDLE], [DIFF, MIDDLE, SAME])], name="devtest.txt")
    reps = reps_of(train, test)
    result = evaluate_lfw(reps, test[0], tmp_path / "out", dev_train=train[0])
    assert result.protocol.startswith("View 1")
    assert [f.threshold for f in result.folds] == [MIDDLE]
    assert result.accuracy_mean == pytest.approx(4 / 6) and result.accuracy_std == 0.0
    with pytest.raises(UsageError, match="View 1 file with no folds"):
        evaluate_lfw(reps, test[0], tmp_path / "out")


def test_outputs_and_plot_with_comparisons(tmp_path, lfw_dir):
    built = build(tmp_path, [([0.25, SAME, MIDDLE], [DIFF, 2.0, 10.0])] * 10)
    out = tmp_path / "out"
    result = evaluate_lfw(reps_of(built), built[0], out, comparisons=lfw_dir / "comparisons")
    assert sorted(p.name for p in out.iterdir()) == ["accuracies.txt", "result.json", "roc.csv", "roc.pdf", "roc.png"]
    with Image.open(out / "roc.png") as image:
        image.verify()
    assert (out / "roc.pdf").read_bytes().startswith(b"%PDF")
    saved = json.loads((out / "result.json").read_text())
    assert saved["accuracy_mean"] == result.accuracy_mean and len(saved["folds"]) == 10
    rows = (out / "roc.csv").read_text().splitlines()
    assert rows[0] == "curve,threshold,fpr,tpr"
    assert {r.split(",")[0] for r in rows[1:]} == {str(k) for k in range(10)} | {"mean"}
    assert result.auc == pytest.approx(np.mean([f.auc for f in result.folds]))


def test_published_curves(lfw_dir):
    curves = {c.label: c for c in read_comparisons(lfw_dir / "comparisons")}
    assert len(curves) == 5
    assert curves["Baidu"].auc > 0.99 and curves["Human, cropped"].auc > 0.99
    assert 0.6 < curves["Eigenfaces (img-restrict)"].auc < 0.7
    openbr = curves["OpenBR v1.1.0"]
    assert openbr.fpr[0] == pytest.approx(0.001) and openbr.tpr[0] == pytest.approx(1 - 0.9151)


def test_real_pairs_files_parse_and_evaluate(tmp_path, lfw_dir):
    view2 = read_pairs(lfw_dir / "pairs.txt")
    assert (view2.view, view2.n_folds, len(view2)) == (2, 10, 6000)
    assert np.bincount(view2.fold).tolist() == [600] * 10
    assert view2.same[:300].all() and not view2.same[300:600].any()
    train, test = read_pairs(lfw_dir / "pairsDevTrain.txt"), read_pairs(lfw_dir / "pairsDevTest.txt")
    assert (train.view, len(train), test.view, len(test)) == (1, 2200, 1, 1000)
    # Synthetic embeddings keyed by the real names: a centre per person plus noise.
    keys = sorted(set(sum(train.keys(), []) + sum(test.keys(), [])))
    rng = np.random.default_rng(0)
    centre = {name: rng.normal(size=8) for name in sorted({k.split("/")[0] for k in keys})}
    out = tmp_path / "reps"
    with RepsWriter(out, len(keys), 8, {"model": "synthetic"}) as writer:
        for key in keys:
            person = key.split("/")[0]
            writer.add(f"aligned/{key}.png", person, centre[person] + rng.normal(scale=0.3, size=8))
    result = evaluate_lfw(out, test.path, tmp_path / "eval", dev_train=train.path)
    assert result.pairs == 1000 and result.missing_pairs == 0
    assert result.accuracy_mean > 0.95 and result.auc > 0.98


def test_cli_table_json_and_errors(tmp_path):
    built = build(tmp_path, [clean_fold()] * 9 + [([DIFF] * PER_FOLD, [SAME] * PER_FOLD)])
    reps_dir = tmp_path / "reps"
    reps = reps_of(built)
    with RepsWriter(reps_dir, len(reps), 2, reps.meta) as writer:
        for path, row in zip(reps.paths, reps.embeddings):
            writer.add(path, path.split("/")[-2], row)
    runner = CliRunner()

    table = runner.invoke(app, ["lfw-roc", str(reps_dir), str(built[0]), str(tmp_path / "out")])
    assert table.exit_code == 0, table.output
    mean_row = [line for line in table.stdout.splitlines() if "mean" in line]
    assert len(mean_row) == 1 and "0.9000 ± 0.3000" in mean_row[0]
    fold_9 = [line for line in table.stdout.splitlines() if line.strip("│ ").startswith("9 ")]
    assert len(fold_9) == 1 and "0.0000" in fold_9[0]  # the reversed fold's accuracy

    as_json = runner.invoke(app, ["lfw-roc", str(reps_dir), str(built[0]), str(tmp_path / "out"), "--json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["accuracy_std"] == pytest.approx(0.3)

    bad = tmp_path / "bad.txt"
    bad.write_text("not pairs\n")
    failed = runner.invoke(app, ["lfw-roc", str(reps_dir), str(bad), str(tmp_path / "out")])
    assert failed.exit_code == 1
    assert failed.stderr.startswith("Error: ") and "is not an LFW pairs file" in failed.stderr
    assert "Traceback" not in failed.output

    missing = runner.invoke(app, ["lfw-roc", str(tmp_path / "nowhere"), str(built[0]), str(tmp_path / "o")])
    assert missing.exit_code == 1 and "does not exist" in missing.stderr
    no_out = runner.invoke(app, ["lfw-roc", str(reps_dir), str(built[0])])
    assert no_out.exit_code == 2 and "missing argument 'out'" in no_out.stderr.lower()


def test_plot_label_is_the_model_name():
    assert model_label({"model": {"name": "dlib-resnet.v1", "threshold": 0.2}, "flip": True}) == "dlib-resnet.v1 + flip"
    assert model_label({"model": "toy"}) == "toy"
    assert model_label({}) == "this model"


# ---------------------------------------------------------------- the metrics against brute force

def random_pairs(rng, n):
    """Distances rounded to 0.1, so that ties between and within classes are common."""
    same = np.arange(n) < n // 2
    rng.shuffle(same)
    distance = np.round(rng.normal(loc=np.where(same, 1.0, 1.6), scale=0.4), 1)
    return distance, same


def probes(distance):
    """Thresholds that realise every possible split of the pairs (and a few that do not)."""
    values = np.unique(distance)
    return np.concatenate([values - 1e-6, values, values + 1e-6, [values[0] - 1, values[-1] + 1]])


def accuracy(distance, same, t):
    return np.mean((distance <= t) == same)


def far(distance, same, t):
    return np.count_nonzero((distance <= t) & ~same) / np.count_nonzero(~same)


@pytest.mark.parametrize("seed", range(12))
def test_thresholds_against_brute_force(seed):
    rng = np.random.default_rng(seed)
    distance, same = random_pairs(rng, int(rng.integers(6, 80)))
    t = best_threshold(distance, same)
    assert accuracy(distance, same, t) == max(accuracy(distance, same, p) for p in probes(distance))
    for target in (0.0, 0.1, 0.25, 0.5):
        t = threshold_at_far(distance, same, target)
        accepted = np.count_nonzero(distance <= t)
        allowed = [p for p in probes(distance) if far(distance, same, p) <= target]
        # The most accepting threshold that keeps FAR within the target (none: accept nothing).
        most = max((np.count_nonzero(distance <= p) for p in allowed), default=0)
        assert accepted == most
        assert far(distance, same, t) <= target or accepted == 0


@pytest.mark.parametrize("seed", range(12))
def test_auc_is_the_probability_a_matched_pair_is_closer(seed):
    rng = np.random.default_rng(100 + seed)
    distance, same = random_pairs(rng, int(rng.integers(4, 80)))
    pos, neg = distance[same], distance[~same]
    mann_whitney = np.mean([(p < q) + 0.5 * (p == q) for p in pos for q in neg])
    assert roc_curve(distance, same).auc == pytest.approx(mann_whitney, abs=1e-12)


def point_on_path(fpr, tpr, steps=2001):
    """Every point of a piecewise-linear path, densely."""
    t = np.linspace(0, 1, steps)
    xs = np.concatenate([fpr[i] + t * (fpr[i + 1] - fpr[i]) for i in range(len(fpr) - 1)])
    ys = np.concatenate([tpr[i] + t * (tpr[i + 1] - tpr[i]) for i in range(len(fpr) - 1)])
    return xs, ys


@pytest.mark.parametrize("seed", range(8))
def test_eer_against_a_dense_walk_along_the_curve(seed):
    rng = np.random.default_rng(200 + seed)
    distance, same = random_pairs(rng, int(rng.integers(10, 80)))
    roc = roc_curve(distance, same)
    xs, ys = point_on_path(roc.fpr, roc.tpr)
    crossing = np.argmin(np.abs(xs - (1 - ys)))
    assert equal_error_rate(roc.fpr, roc.tpr) == pytest.approx(xs[crossing], abs=2e-3)


@pytest.mark.parametrize("seed", range(6))
def test_mean_roc_is_the_pointwise_mean_of_the_folds(seed):
    rng = np.random.default_rng(300 + seed)
    rocs = [roc_curve(*random_pairs(rng, int(rng.integers(6, 40)))) for _ in range(5)]
    fpr, tpr = mean_roc(rocs)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= -1e-12)
    from facenet_cli.evaluate.verification import curve_auc

    assert curve_auc(fpr, tpr) == pytest.approx(np.mean([r.auc for r in rocs]), abs=1e-12)
    for x in rng.random(25):
        # Away from every fold's corner points, each fold's curve is one straight segment at x.
        def fold_tpr(r):
            i = np.flatnonzero((r.fpr[:-1] < x) & (r.fpr[1:] > x))[0]
            return r.tpr[i] + (x - r.fpr[i]) / (r.fpr[i + 1] - r.fpr[i]) * (r.tpr[i + 1] - r.tpr[i])

        j = np.flatnonzero((fpr[:-1] < x) & (fpr[1:] > x))[0]
        mean_here = tpr[j] + (x - fpr[j]) / (fpr[j + 1] - fpr[j]) * (tpr[j + 1] - tpr[j])
        assert mean_here == pytest.approx(np.mean([fold_tpr(r) for r in rocs]), abs=1e-9)


def test_cross_validation_against_brute_force():
    rng = np.random.default_rng(9)
    distance, same = random_pairs(rng, 200)
    fold = np.repeat(np.arange(10), 20)
    from facenet_cli.evaluate.verification import PairDistances

    pd = PairDistances(distance, same, np.zeros(200, bool), [])
    result = evaluate_distances(pd, fold)
    for k, r in enumerate(result.folds):
        train, test = fold != k, fold == k
        best = max(accuracy(distance[train], same[train], p) for p in probes(distance[train]))
        assert accuracy(distance[train], same[train], r.threshold) == best
        assert r.accuracy == accuracy(distance[test], same[test], r.threshold)
        assert r.far == far(distance[test], same[test], r.val_threshold)
        assert r.val == np.count_nonzero((distance[test] <= r.val_threshold) & same[test]) / np.count_nonzero(same[test])
    assert result.accuracy_mean == pytest.approx(np.mean([r.accuracy for r in result.folds]))
    assert result.accuracy_std == pytest.approx(np.std([r.accuracy for r in result.folds]))
