"""`facenet train ALIGNED --out WORKDIR`: triplet training (optionally distilled) of an nn4 network."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import UsageError
from ..training.train import BatchStats, Callbacks, EpochRow, TrainConfig, TrainReport, resume, train
from ._app import DeviceOption, command, console
from ._progress import progress_bar


@command
def train_command(
    aligned: Annotated[Optional[Path], typer.Argument(
        help="Aligned <person>/<image>.png tree from `facenet align` (96 px outerEyesAndNose for nn4 nets).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", help="Work folder: checkpoint-epochNNN.pt, last.pt, loss.csv, loss.png.")] = None,
    model: Annotated[Optional[str], typer.Option(
        "--model", help="Architecture to train from random weights: nn4, nn4.small1, nn4.small2 (default), nn2.")] = None,
    init: Annotated[Optional[str], typer.Option(help="Start from this checkpoint's weights (fine-tuning).")] = None,
    resume_dir: Annotated[Optional[Path], typer.Option(
        "--resume", help="Continue the run in this work folder where it stopped (other options come from it; "
        "--epochs may raise the total).")] = None,
    people_per_batch: Annotated[int, typer.Option(help="P: people per batch.")] = 15,
    images_per_person: Annotated[int, typer.Option(help="K: images per person in a batch; people with fewer are left out.")] = 20,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs in all (default 10; 0 saves the untrained network).")] = None,
    batches_per_epoch: Annotated[Optional[int], typer.Option(help="Batches per epoch (default: people / P).")] = None,
    minutes: Annotated[Optional[float], typer.Option(help="Stop after the epoch that crosses this many minutes.")] = None,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    optimizer: Annotated[str, typer.Option(help="adam or sgd (momentum 0.9).")] = "adam",
    alpha: Annotated[float, typer.Option(help="Triplet margin on squared L2 distance.")] = 0.2,
    miner: Annotated[str, typer.Option(help="Triplet selection: openface, semihard or batch-hard.")] = "openface",
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Mirror half the training images at random.")] = True,
    teacher_reps: Annotated[Optional[Path], typer.Option(
        help="Distil from this `facenet represent` folder of the same images (teacher's own alignment); "
        "rows match by <person>/<image name>, images without a row are left out.")] = None,
    distill_weight: Annotated[float, typer.Option(help="Weight of the distillation term (1 - cosine to the teacher).")] = 1.0,
    triplet_weight: Annotated[float, typer.Option(help="Weight of the triplet term (0: pure distillation).")] = 1.0,
    distill_images: Annotated[int, typer.Option(
        help="With --teacher-reps: this many extra random images per batch, distillation only, so that people "
        "with fewer than K images teach too.")] = 0,
    val_pairs: Annotated[Optional[Path], typer.Option(help="LFW pairs to validate on every epoch (e.g. pairsDevTest.txt).")] = None,
    val_train_pairs: Annotated[Optional[Path], typer.Option(
        help="Choose the validation threshold on these pairs (pairsDevTrain.txt); without it, 10-fold cross-validation.")] = None,
    val_aligned: Annotated[Optional[Path], typer.Option(help="Aligned LFW images of the validation pairs (same spec).")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the weights, batches, mirroring and triplet draws.")] = 0,
    device: DeviceOption = "auto",
) -> None:
    """Train an nn4-family network with triplet loss on P x K batches, checkpointing every epoch.

    Example: facenet train aligned/ --model nn4.small2 --out run1 --val-pairs lfw/pairsDevTest.txt --val-aligned lfw-96/
    """
    callbacks, progress = progress_callbacks()
    with progress:
        if resume_dir is not None:
            report = resume(resume_dir, epochs, minutes, callbacks)
        else:
            if aligned is None or out is None:
                raise UsageError("Give an ALIGNED folder and --out WORKDIR, or --resume WORKDIR.")
            config = TrainConfig(
                aligned=str(aligned), out=str(out), architecture=model, init=init, people_per_batch=people_per_batch,
                images_per_person=images_per_person, alpha=alpha, optimizer=optimizer, lr=lr,
                epochs=10 if epochs is None else epochs, batches_per_epoch=batches_per_epoch, minutes=minutes,
                device=device, seed=seed, miner=miner, flip=flip,
                teacher_reps=str(teacher_reps) if teacher_reps else None, distill_weight=distill_weight,
                triplet_weight=triplet_weight, distill_images=distill_images, val_pairs=str(val_pairs) if val_pairs else None,
                val_train_pairs=str(val_train_pairs) if val_train_pairs else None,
                val_aligned=str(val_aligned) if val_aligned else None)
            report = train(config, callbacks)
    print_report(report)


def progress_callbacks():
    progress = progress_bar()
    task = [None]

    def on_start(images: int, people: int, first_epoch: int) -> None:
        console.print(f"Training on {images} images of {people} people, from epoch {first_epoch}.")

    def on_epoch_start(epoch: int, batches: int) -> None:
        if task[0] is not None:
            progress.remove_task(task[0])
        task[0] = progress.add_task(f"Epoch {epoch}", total=batches, rate="")

    def on_batch(s: BatchStats) -> None:
        progress.update(task[0], advance=1,
                        rate=f"loss {s.loss:.4f}, {s.triplets} triplets, {s.images_per_s:.1f} img/s")

    def on_epoch(row: EpochRow) -> None:
        val = f", validation accuracy {row.val_accuracy:.4f}" if row.val_accuracy is not None else ""
        progress.console.print(f"epoch {row.epoch}: loss {row.loss:.4f}, {row.triplets_per_batch:.1f} triplets/batch, "
                               f"{row.images_per_s:.1f} img/s, {row.seconds:.0f} s{val}")

    return Callbacks(on_start, on_epoch_start, on_batch, on_epoch), progress


def print_report(report: TrainReport) -> None:
    if report.skipped_without_teacher:
        console.print(f"{report.skipped_without_teacher} images had no teacher row and were left out.")
    if report.val_protocol:
        console.print(f"Validation: {report.val_protocol}.")
    console.print(f"{len(report.history)} epochs done in {report.seconds:.0f} s; checkpoint {report.out / 'last.pt'} "
                  f"(use it as --model), log {report.out / 'loss.csv'}.")
