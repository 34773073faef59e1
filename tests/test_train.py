"""`facenet train` on a few real LFW people: learning, exact resume, checkpoints usable as
--model, distillation, validation, the CLI's grammar and --json, and bad input refused before
training. Kills, full disks and damaged checkpoints: tests/test_faults_train.py."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from facenet_cli.align.specs import get_spec
from facenet_cli.formats.aligned import SPEC_FILE
from facenet_cli.formats.checkpoints import load_checkpoint
from facenet_cli.cli import app
from facenet_cli.nets.embedder import Embedder, squared_distances
from facenet_cli.models.hub import resolve_model
from facenet_cli.images import read_rgb
from facenet_cli.align.job import AlignJob, align_tree
from facenet_cli.formats.reps import RepsWriter, read_reps
from facenet_cli.training import triplet_loss
from facenet_cli.training.train import TrainConfig, resume, train

from .helpers import copy_people

pytestmark = pytest.mark.slow  # real training runs (minutes in all)

PEOPLE = ["George_W_Bush", "Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder", "Ariel_Sharon"]
TRAIN_IMAGES = 4  # per person in the training folder; images 5 and 6 are held out
runner = CliRunner()
SMALL_CLI = ["--arch", "nn4.small2", "--people-per-batch", "4", "--images-per-person", "3", "--batches-per-epoch", "2",
             "--device", "cpu", "--seed", "7"]  # the CLI's spelling of small()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def aligned_all(lfw_images, tmp_path_factory) -> Path:
    """The first 6 images of each person, aligned for nn4 (96 px outerEyesAndNose)."""
    root = tmp_path_factory.mktemp("train-data")
    raw = copy_people(lfw_images, root / "raw", {p: 6 for p in PEOPLE})
    align_tree(raw, root / "aligned-all", AlignJob(spec=get_spec("outerEyesAndNose"), fallback="center"), workers=1)
    return root / "aligned-all"


def subset(aligned: Path, dest: Path, images: slice, people=PEOPLE) -> Path:
    """A copy of `aligned` with a slice of each person's images (and its align-spec.json)."""
    dest.mkdir(parents=True)
    shutil.copy(aligned / SPEC_FILE, dest / SPEC_FILE)
    for person in people:
        (dest / person).mkdir()
        for f in sorted((aligned / person).glob("*.png"))[images]:
            shutil.copy(f, dest / person / f.name)
    return dest


@pytest.fixture(scope="module")
def aligned(aligned_all, tmp_path_factory) -> Path:
    return subset(aligned_all, tmp_path_factory.mktemp("train") / "aligned", slice(0, TRAIN_IMAGES))


def small(aligned: Path, out: Path, **overrides) -> TrainConfig:
    settings = dict(aligned=str(aligned), out=str(out), architecture="nn4.small2", people_per_batch=4,
                    images_per_person=3, epochs=3, batches_per_epoch=2, device="cpu", seed=7)
    settings.update(overrides)
    return TrainConfig(**settings)


def weights(path: Path) -> dict:
    return load_checkpoint(path)["state_dict"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def straight_run(aligned, tmp_path_factory) -> Path:
    """Three epochs without interruption: the reference for the resume tests."""
    out = tmp_path_factory.mktemp("straight") / "run"
    train(small(aligned, out))
    return out


# ---------------------------------------------------------------- learning


# Every training image in every batch (P x K = 6 x 4), SGD and the batch-hard miner: the
# training loss reaches 0 within ~40 steps, and the 20 steps after it, whose updates are ~0,
# let batch norm's running statistics (momentum 0.1) catch up with the batch statistics, so the
# checkpoint in eval mode (what --model uses) separates the people too. With fewer steps the
# eval-mode network lags behind its training-mode self: the old 12-step test measured
# embeddings collapsed to one point (every distance ~1e-6, loss = alpha) and passed or failed
# with the CPU's float rounding. Measured with seeds 1, 2, 3, 7, 11 on AVX-512 and forced AVX2
# kernels (ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2): training loss 0.31-0.36 -> 0.00,
# training images in eval mode ordered 100 % with different people 0.62-0.69 apart. Held-out images
# of these people are not asserted to improve: from scratch on 24 images their loss ended at
# 0.15-0.205 against 0.2 at the start (seed and CPU decide), which is no margin.
LEARN = dict(people_per_batch=len(PEOPLE), images_per_person=TRAIN_IMAGES, optimizer="sgd", lr=0.01,
             miner="batch-hard", epochs=15, batches_per_epoch=4)


def triplet_stats(checkpoint: Path, aligned_all: Path, images: slice) -> tuple[float, float, float]:
    """The checkpoint as a model (eval mode) on a slice of each person's images, over every
    (anchor, positive, negative) triplet: (mean triplet loss, fraction with d(a,p) < d(a,n),
    mean squared distance between different people)."""
    embedder = Embedder(resolve_model(checkpoint), device="cpu")
    files = [sorted((aligned_all / p).glob("*.png"))[images] for p in PEOPLE]
    labels = torch.tensor([i for i, group in enumerate(files) for _ in group])
    emb = torch.from_numpy(embedder.embed([read_rgb(f) for group in files for f in group]))
    same = labels[:, None] == labels[None, :]
    a, p, n = torch.nonzero(same[:, :, None] & ~same[:, None, :] & ~torch.eye(len(labels), dtype=torch.bool)[:, :, None],
                            as_tuple=True)
    loss = float(triplet_loss()(emb, labels, indices_tuple=(a, p, n)))
    d = squared_distances(emb.numpy(), emb.numpy())
    return loss, float(np.mean(d[a, p] < d[a, n])), float(d[~same.numpy()].mean())


def test_training_separates_the_people_it_was_shown(aligned, aligned_all, tmp_path):
    out = tmp_path / "run"
    report = train(small(aligned, out, **LEARN))
    assert [row.epoch for row in report.history] == list(range(1, LEARN["epochs"] + 1))
    # Training mode: the mined loss falls to (nearly) 0 from ~0.3.
    assert report.history[-1].loss < 0.1 * report.history[0].loss, [row.loss for row in report.history]
    # The saved network, as --model uses it: the training people are apart (margin: 100 % and
    # 0.65 measured; a collapsed network gives ~50 % and ~0).
    loss, ordered, apart = triplet_stats(out / "last.pt", aligned_all, slice(0, TRAIN_IMAGES))
    assert loss < 0.05 and ordered > 0.95 and apart > 0.3, (loss, ordered, apart)
    # The starting network in eval mode maps every face to one point (distances ~1e-6); the
    # trained one keeps unseen faces (the 5th and 6th of each person) apart too (0.29 measured).
    _, _, held_apart = triplet_stats(out / "last.pt", aligned_all, slice(TRAIN_IMAGES, None))
    assert held_apart > 0.05, held_apart
    lines = (out / "loss.csv").read_text().splitlines()
    assert lines[0].startswith("epoch,loss,triplet_loss,distill_loss,triplets_per_batch,images_per_s")
    assert len(lines) == LEARN["epochs"] + 1
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [float(line.split(",")[1]) for line in lines[1:]] == pytest.approx([row.loss for row in report.history],
                                                                             rel=1e-5, abs=1e-6)
    assert all(row.triplets_per_batch > 0 for row in report.history)  # the miner found work every epoch


# ---------------------------------------------------------------- resume


def test_resume_equals_the_uninterrupted_run(aligned, straight_run, tmp_path):
    out = tmp_path / "run"
    train(small(aligned, out, epochs=1))
    report = resume(out, epochs=3)
    assert [row.epoch for row in report.history] == [1, 2, 3]
    assert_same_weights(weights(out / "last.pt"), weights(straight_run / "last.pt"))
    assert_same_weights(weights(out / "checkpoint-epoch002.pt"), weights(straight_run / "checkpoint-epoch002.pt"))
    straight = load_checkpoint(straight_run / "last.pt")
    resumed = load_checkpoint(out / "last.pt")
    assert [r["loss"] for r in resumed["history"]] == [r["loss"] for r in straight["history"]]


def test_resume_through_the_cli_with_json(aligned, straight_run, tmp_path):
    out = tmp_path / "run"
    first = runner.invoke(app, ["train", str(aligned), str(out), *SMALL_CLI, "--epochs", "1", "--json"])
    assert first.exit_code == 0, first.output
    document = json.loads(first.stdout)  # stdout holds the JSON document alone
    assert document["epochs"] == 1 and document["epochs_this_run"] == 1 and document["architecture"] == "nn4.small2"
    assert document["last"] == str(out / "last.pt") and document["loss_csv"] == str(out / "loss.csv")
    assert document["final_loss"] == load_checkpoint(out / "last.pt")["history"][-1]["loss"]

    again = runner.invoke(app, ["train", "--resume", str(out), "--epochs", "3", "--device", "cpu", "--json"])
    assert again.exit_code == 0, again.output
    document = json.loads(again.stdout)
    assert document["epochs"] == 3 and document["epochs_this_run"] == 2
    assert document["final_loss"] == load_checkpoint(straight_run / "last.pt")["history"][-1]["loss"]
    assert_same_weights(weights(out / "last.pt"), weights(straight_run / "last.pt"))


def test_resume_refuses_options_it_would_not_apply(aligned, straight_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(straight_run, copy)
    before = (copy / "last.pt").read_bytes()
    for extra, named in ((["--lr", "0.1"], "--lr"), (["--miner", "semihard", "--seed", "3"], "--miner, --seed"),
                         ([str(aligned)], "ALIGNED"), (["--arch", "nn4"], "--arch")):
        result = runner.invoke(app, ["train", "--resume", str(copy), *extra])
        assert result.exit_code == 2, result.output
        assert f"so {named} cannot be given with it" in result.stderr
    assert (copy / "last.pt").read_bytes() == before


# ---------------------------------------------------------------- the checkpoint as a model


def test_checkpoint_is_a_model_for_represent(aligned, straight_run, tmp_path):
    record = resolve_model(straight_run / "last.pt")
    assert record.architecture == "nn4.small2"
    assert record.align == get_spec("outerEyesAndNose")
    assert record.name == "nn4.small2@run-epoch3"
    assert record.weights is not None and record.weights.path == str((straight_run / "last.pt").resolve())
    embedder = Embedder(record, device="cpu")
    assert_same_weights({k: v for k, v in embedder.network.state_dict().items()}, weights(straight_run / "last.pt"))

    reps_dir = tmp_path / "reps"
    result = runner.invoke(app, ["represent", str(aligned), str(reps_dir), "--model", str(straight_run / "last.pt"),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    reps = read_reps(reps_dir)
    assert reps.embeddings.shape == (len(PEOPLE) * TRAIN_IMAGES, 128)
    assert reps.meta["model"]["align"]["name"] == "outerEyesAndNose"

    # represent refuses a folder aligned another way, naming the spec the checkpoint needs.
    chips = subset(aligned, tmp_path / "chips", slice(0, 1))
    spec = json.loads((chips / SPEC_FILE).read_text())
    spec["spec"] = get_spec("dlib-chip").to_dict()
    (chips / SPEC_FILE).write_text(json.dumps(spec))
    result = runner.invoke(app, ["represent", str(chips), str(tmp_path / "bad"), "--model",
                                 str(straight_run / "last.pt"), "--device", "cpu"])
    assert result.exit_code == 1
    assert "outerEyesAndNose" in result.output


# ---------------------------------------------------------------- distillation


def write_teacher(folder: Path, paths: list[str], seed: int = 0) -> Path:
    """Synthetic teacher vectors keyed by the real LFW image paths (.jpg, another root): one
    direction per person plus noise, all sharing a large common offset as real teachers do."""
    g = np.random.default_rng(seed)
    people = sorted({Path(p).parent.name for p in paths})
    centres = {p: g.normal(size=128) for p in people}
    common = 5 * g.normal(size=128)
    with RepsWriter(folder, len(paths), 128, {"model": "synthetic"}) as writer:
        for p in paths:
            person = Path(p).parent.name
            vector = common + centres[person] + 0.3 * g.normal(size=128)
            writer.add(p, person, (vector / np.linalg.norm(vector)).astype(np.float32))
    return folder


def test_distillation_follows_the_teacher(aligned, lfw_images, tmp_path):
    images = [str(f) for p in PEOPLE for f in sorted((lfw_images / p).glob("*.jpg"))[:TRAIN_IMAGES]]
    # One image per person lacks a teacher row: it is left out, and the report says so.
    teacher = write_teacher(tmp_path / "teacher", [p for i, p in enumerate(images) if i % TRAIN_IMAGES != 0])
    out = tmp_path / "run"
    report = train(small(aligned, out, teacher_reps=str(teacher), triplet_weight=0.0, epochs=3,
                         batches_per_epoch=3, images_per_person=2, lr=2e-3))
    assert report.skipped_without_teacher == len(PEOPLE)
    assert report.images == len(PEOPLE) * (TRAIN_IMAGES - 1)
    distill = [row.distill_loss for row in report.history]
    assert distill[-1] < distill[0]
    assert all(row.triplet_loss >= 0 for row in report.history)
    assert load_checkpoint(out / "last.pt")["config"]["teacher_reps"] == str(teacher)


def test_distillation_extra_images_include_people_too_small_for_pk(aligned, lfw_images, tmp_path):
    """With a teacher, people with fewer than K images still teach through the extra images."""
    images = [str(f) for p in PEOPLE for f in sorted((lfw_images / p).glob("*.jpg"))[:TRAIN_IMAGES]]
    teacher = write_teacher(tmp_path / "teacher", images)
    out = tmp_path / "run"
    # K larger than some people have would reject them; with a teacher they are kept as extras.
    report = train(small(aligned, out, teacher_reps=str(teacher), epochs=2, batches_per_epoch=2,
                         images_per_person=2, distill_images=5))
    assert report.images == len(images)
    assert [row.epoch for row in report.history] == [1, 2]
    assert load_checkpoint(out / "last.pt")["config"]["distill_images"] == 5
    result = invoke(str(aligned), str(tmp_path / "bad"), "--distill-images", "4")
    assert result.exit_code == 2 and "--distill-images needs --teacher-reps" in result.output


# ---------------------------------------------------------------- bad input


def invoke(*args: str):
    return runner.invoke(app, ["train", *args, "--device", "cpu"])


def test_missing_arguments_are_a_usage_error(tmp_path):
    result = invoke(str(tmp_path))
    assert result.exit_code == 2
    assert "Give an ALIGNED folder and an OUT work folder" in result.stderr


def test_unknown_architecture_is_refused_by_the_parser(aligned, tmp_path):
    result = invoke(str(aligned), str(tmp_path / "run"), "--arch", "nn5")
    assert result.exit_code == 2 and "nn4.small2" in result.stderr
    assert not (tmp_path / "run").exists()


def test_missing_aligned_folder(tmp_path):
    result = invoke(str(tmp_path / "nope"), str(tmp_path / "run"))
    assert result.exit_code == 2
    assert "does not exist" in result.output and "facenet align" in result.output
    assert not (tmp_path / "run").exists()


def test_one_person_is_not_enough(aligned, tmp_path):
    one = subset(aligned, tmp_path / "one", slice(0, 4), people=PEOPLE[:1])
    result = invoke(str(one), str(tmp_path / "run"))
    assert result.exit_code == 2
    assert "at least 2 people" in result.output
    assert not (tmp_path / "run").exists()


def test_too_few_images_per_person_says_what_to_change(aligned, tmp_path):
    result = invoke(str(aligned), str(tmp_path / "run"))  # OpenFace's K=20 > 4 images each
    assert result.exit_code == 2
    assert "Only 0 of 6 people have 20 or more images" in result.output
    assert "--people-per-batch" in result.output and "--images-per-person" in result.output
    assert not (tmp_path / "run").exists()


def test_folder_aligned_for_another_model(aligned, tmp_path):
    chips = subset(aligned, tmp_path / "chips", slice(0, 4))
    spec = json.loads((chips / SPEC_FILE).read_text())
    spec["spec"] = get_spec("dlib-chip").to_dict()
    (chips / SPEC_FILE).write_text(json.dumps(spec))
    result = invoke(str(chips), str(tmp_path / "run"), "--people-per-batch", "4", "--images-per-person", "3")
    assert result.exit_code == 1
    assert "dlib-chip" in result.output and "--landmarks outerEyesAndNose --size 96" in result.output


def test_init_checkpoint_of_another_architecture(aligned, straight_run, tmp_path):
    result = invoke(str(aligned), str(tmp_path / "run"), "--arch", "nn4", "--init",
                    str(straight_run / "last.pt"), "--people-per-batch", "4", "--images-per-person", "3")
    assert result.exit_code == 2
    assert "holds a nn4.small2 network, not nn4; drop --arch" in result.output
    assert not (tmp_path / "run").exists()


def test_teacher_covering_no_training_image(aligned, tmp_path):
    teacher = write_teacher(tmp_path / "teacher", ["/elsewhere/Someone_Else/Someone_Else_0001.jpg"])
    result = invoke(str(aligned), str(tmp_path / "run"), "--teacher-reps", str(teacher),
                    "--people-per-batch", "4", "--images-per-person", "3")
    assert result.exit_code == 1
    assert "cover no training image" in result.output
    assert not (tmp_path / "run").exists()


def test_existing_run_is_not_overwritten(aligned, straight_run):
    before = (straight_run / "last.pt").read_bytes()
    result = invoke(str(aligned), str(straight_run), "--people-per-batch", "4", "--images-per-person", "3")
    assert result.exit_code == 2
    assert f"resume it with `facenet train --resume {straight_run}`" in result.output
    assert (straight_run / "last.pt").read_bytes() == before


# ---------------------------------------------------------------- validation


def write_view1_pairs(path: Path, count: int = 10) -> Path:
    """A View 1 pairs file over the test people's first 6 images: `count` matched, `count` mismatched."""
    matched = [(PEOPLE[i % 6], 1 + i % 3, 4 + i % 3) for i in range(count)]
    mismatched = [(PEOPLE[i % 6], 1 + i % 6, PEOPLE[(i + 1) % 6], 1 + (i + 2) % 6) for i in range(count)]
    lines = [str(count)] + ["\t".join(map(str, m)) for m in matched] + ["\t".join(map(str, m)) for m in mismatched]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_validation_accuracy_every_epoch(aligned, aligned_all, tmp_path):
    test_pairs = write_view1_pairs(tmp_path / "pairsDevTest.txt")
    report = train(small(aligned, tmp_path / "cv", epochs=1, batches_per_epoch=1, val_pairs=str(test_pairs),
                         val_aligned=str(aligned_all)))
    assert report.val_protocol == "10-fold cross-validation on pairsDevTest.txt"
    row = (tmp_path / "cv" / "loss.csv").read_text().splitlines()[1].split(",")
    assert row[0] == "1" and float(row[7]) == pytest.approx(report.history[0].val_accuracy, rel=1e-5)

    train_pairs = write_view1_pairs(tmp_path / "pairsDevTrain.txt", count=8)
    report = train(small(aligned, tmp_path / "view1", epochs=1, batches_per_epoch=1, val_pairs=str(test_pairs),
                         val_train_pairs=str(train_pairs), val_aligned=str(aligned_all)))
    assert report.val_protocol == "threshold from pairsDevTrain.txt, accuracy on pairsDevTest.txt"
    record = resolve_model(tmp_path / "view1" / "last.pt")
    assert record.threshold == pytest.approx(report.history[0].val_threshold)
    assert record.lfw["val_accuracy"] == report.history[0].val_accuracy
    # The same accuracy by hand: the checkpoint's network, its threshold, the 20 test pairs
    # (within one pair: a distance within float noise of the threshold may fall either way).
    assert by_hand_accuracy(record, aligned_all, test_pairs) == pytest.approx(report.history[0].val_accuracy,
                                                                              abs=1 / 20 + 1e-9)


def by_hand_accuracy(record, aligned_all: Path, pairs_file: Path) -> float:
    embedder = Embedder(record, device="cpu")
    right = []
    for line in pairs_file.read_text().splitlines()[1:]:
        f = line.split("\t")
        (p1, i1, p2, i2), same = ((f[0], f[1], f[0], f[2]), True) if len(f) == 3 else ((f[0], f[1], f[2], f[3]), False)
        crops = [read_rgb(aligned_all / p / f"{p}_{int(i):04d}.png") for p, i in ((p1, i1), (p2, i2))]
        v = embedder.embed(crops)
        right.append((squared_distances(v[:1], v[1:])[0, 0] <= record.threshold) == same)
    assert len(right) == 20
    return sum(right) / len(right)


def test_validation_needs_both_options(aligned, tmp_path):
    result = invoke(str(aligned), str(tmp_path / "run"), "--val-pairs", "x.txt")
    assert result.exit_code == 2
    assert "--val-pairs and --val-aligned go together" in result.output


def test_images_decoded_per_batch_train_like_the_cache(aligned, tmp_path):
    cached = train(small(aligned, tmp_path / "cached", epochs=1, batches_per_epoch=1))
    streamed = train(small(aligned, tmp_path / "streamed", epochs=1, batches_per_epoch=1), cache_limit=0)
    assert cached.history[0].loss == streamed.history[0].loss
    assert_same_weights(weights(tmp_path / "cached" / "last.pt"), weights(tmp_path / "streamed" / "last.pt"))


def test_validation_folder_missing_pair_people_is_refused(aligned, tmp_path):
    pairs = write_view1_pairs(tmp_path / "pairsDevTest.txt")
    few = subset(aligned, tmp_path / "few", slice(0, 4), people=PEOPLE[:3])
    result = invoke(str(aligned), str(tmp_path / "run"), "--val-pairs", str(pairs), "--val-aligned", str(few),
                    "--people-per-batch", "4", "--images-per-person", "3")
    assert result.exit_code == 1
    assert "3 people of the validation pairs" in result.output and "have no image in" in result.output
    assert not (tmp_path / "run").exists()


def test_init_starts_from_a_checkpoint(aligned, straight_run, tmp_path):
    report = train(small(aligned, tmp_path / "tuned", architecture=None, init=str(straight_run / "last.pt"), epochs=0))
    assert report.record.architecture == "nn4.small2"
    assert_same_weights(weights(tmp_path / "tuned" / "last.pt"), weights(straight_run / "last.pt"))


def test_init_from_a_model_of_another_family(aligned, tmp_path):
    result = invoke(str(aligned), str(tmp_path / "run"), "--init", "dlib-resnet.v1",
                    "--people-per-batch", "4", "--images-per-person", "3")
    assert result.exit_code == 2
    assert "dlib-resnet model, which facenet train cannot train" in result.output
