"""`facenet train ALIGNED OUT` / `facenet train --resume OUT`: triplet training (optionally
distilled) of an nn4-family network, checkpointing every epoch."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..choices import Architecture, Device, Miner, Optimizer
from ..errors import UsageError
from ._app import DeviceOption, JsonOption, command, console, err_console, print_json

if TYPE_CHECKING:
    from ..training.train import TrainReport

# Options that --resume may take (what `resume` accepts, plus the output format); the others
# come from the run's last.pt, and a different value would silently not apply, so it is refused.
_RESUME_OK = {"resume_dir", "epochs", "minutes", "device", "json_output"}


@command
def train_command(
    ctx: typer.Context,
    aligned: Annotated[Optional[Path], typer.Argument(
        help="Aligned <person>/<image>.png tree from `facenet align` (96 px outerEyesAndNose for nn4 nets).",
        metavar="ALIGNED", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Argument(
        help="Work folder: checkpoint-epochNNN.pt, last.pt, loss.csv, loss.png.", metavar="OUT",
        show_default=False)] = None,
    arch: Annotated[Optional[Architecture], typer.Option(
        "--arch", help="Architecture to train from random weights (default nn4.small2; with --init, the "
        "checkpoint's).", show_default=False)] = None,
    init: Annotated[Optional[str], typer.Option(
        "--init", metavar="MODEL", help="Start from this model's weights (a checkpoint from `facenet train`): "
        "fine-tuning.")] = None,
    resume_dir: Annotated[Optional[Path], typer.Option(
        "--resume", metavar="OUT", help="Continue the run in this work folder where it stopped. Only --epochs "
        "(a new total), --minutes and --device may be given with it; every other setting comes from the run.",
        show_default=False)] = None,
    people_per_batch: Annotated[int, typer.Option(help="P: people per batch.")] = 15,
    images_per_person: Annotated[int, typer.Option(help="K: images per person in a batch; people with fewer are left out.")] = 20,
    epochs: Annotated[Optional[int], typer.Option(help="Epochs in all (default 10; 0 saves the untrained network).",
                                                  show_default=False)] = None,
    batches_per_epoch: Annotated[Optional[int], typer.Option(help="Batches per epoch (default: people / P).",
                                                             show_default=False)] = None,
    minutes: Annotated[Optional[float], typer.Option(help="Stop after the epoch that crosses this many minutes.",
                                                     show_default=False)] = None,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-3,
    optimizer: Annotated[Optimizer, typer.Option(help="adam, or sgd (momentum 0.9).")] = Optimizer.adam,
    alpha: Annotated[float, typer.Option(help="Triplet margin on squared L2 distance.")] = 0.2,
    miner: Annotated[Miner, typer.Option(help="Triplet selection: openface (OpenFace's rule), semihard (FaceNet's) "
                                         "or batch-hard.")] = Miner.openface,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Mirror half the training images at random.")] = True,
    teacher_reps: Annotated[Optional[Path], typer.Option(
        help="Distil from this `facenet represent` folder of the same images (teacher's own alignment); "
        "rows match by <person>/<image name>, images without a row are left out.", show_default=False)] = None,
    distill_weight: Annotated[float, typer.Option(help="Weight of the distillation term (1 - cosine to the teacher).")] = 1.0,
    triplet_weight: Annotated[float, typer.Option(help="Weight of the triplet term (0: pure distillation).")] = 1.0,
    distill_images: Annotated[int, typer.Option(
        help="With --teacher-reps: this many extra random images per batch, distillation only, so that people "
        "with fewer than K images teach too.")] = 0,
    val_pairs: Annotated[Optional[Path], typer.Option(
        help="LFW pairs to validate on every epoch (e.g. pairsDevTest.txt).", show_default=False)] = None,
    val_train_pairs: Annotated[Optional[Path], typer.Option(
        help="Choose the validation threshold on these pairs (pairsDevTrain.txt); without it, 10-fold "
        "cross-validation.", show_default=False)] = None,
    val_aligned: Annotated[Optional[Path], typer.Option(
        help="Aligned LFW images of the validation pairs (same alignment).", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed for the weights, batches, mirroring and triplet draws.")] = 0,
    device: DeviceOption = Device.auto,
    json_output: JsonOption = False,
) -> None:
    """Train an nn4-family network with triplet loss on P x K batches, checkpointing every epoch.

    Example: facenet train aligned96/ run1 --arch nn4.small2 --epochs 20 --val-pairs lfw/pairsDevTest.txt --val-aligned lfw-96/

    Resume a stopped run (bit-identical to an uninterrupted one on the CPU): facenet train --resume run1 --epochs 40

    Several processes (DistributedDataParallel; gloo on CPUs, nccl on GPUs), each embedding its share of
    every P x K batch: torchrun --nproc-per-node 2 -m facenet_cli train aligned96/ run1 (only rank 0 writes
    and prints; --resume works the same way).
    """
    from contextlib import nullcontext

    from ..training.distributed import env_rank
    from ..training.train import TrainConfig, resume, train

    if resume_dir is not None:
        refuse_options_with_resume(ctx)
    given_device = ctx.get_parameter_source("device").name != "DEFAULT"
    main_process = env_rank() == 0  # under torchrun only rank 0 reports
    callbacks, progress = progress_callbacks(json_output) if main_process else (None, nullcontext())
    with progress:
        if resume_dir is not None:
            report = resume(resume_dir, epochs, minutes, callbacks,
                            device=device.value if given_device else None)
        else:
            if aligned is None or out is None:
                raise UsageError("Give an ALIGNED folder and an OUT work folder (`facenet train ALIGNED OUT`), "
                                 "or --resume OUT.")
            config = TrainConfig(
                aligned=str(aligned), out=str(out), architecture=arch.value if arch else None, init=init,
                people_per_batch=people_per_batch, images_per_person=images_per_person, alpha=alpha,
                optimizer=optimizer.value, lr=lr, epochs=10 if epochs is None else epochs,
                batches_per_epoch=batches_per_epoch, minutes=minutes, device=device.value, seed=seed,
                miner=miner.value, flip=flip, teacher_reps=str(teacher_reps) if teacher_reps else None,
                distill_weight=distill_weight, triplet_weight=triplet_weight, distill_images=distill_images,
                val_pairs=str(val_pairs) if val_pairs else None,
                val_train_pairs=str(val_train_pairs) if val_train_pairs else None,
                val_aligned=str(val_aligned) if val_aligned else None)
            report = train(config, callbacks)
    if not main_process:
        return
    if json_output:
        print_json(report.to_dict())
    else:
        print_report(report)


def refuse_options_with_resume(ctx: typer.Context) -> None:
    """--resume continues a run as it was set up; options that would change it are refused by name."""
    given = []
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if param.name not in _RESUME_OK and source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP"):
            is_argument = param.param_type_name == "argument"
            given.append((param.metavar or param.name.upper()) if is_argument else param.opts[0])
    if given:
        raise UsageError(f"--resume continues the run with its own settings, so {', '.join(given)} cannot be given "
                         "with it (only --epochs, --minutes and --device); start a new run with --init to change them.")


def progress_callbacks(json_output: bool = False):
    from ..training.train import BatchStats, Callbacks, EpochRow
    from ._progress import progress_bar

    progress = progress_bar()
    say = err_console if json_output else console  # --json: stdout holds the JSON document only
    task = [None]

    def on_start(images: int, people: int, first_epoch: int) -> None:
        say.print(f"Training on {images} images of {people} people, from epoch {first_epoch}.",
                  markup=False, highlight=False)

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
                               f"{row.images_per_s:.1f} img/s, {row.seconds:.0f} s{val}",
                               markup=False, highlight=False)

    return Callbacks(on_start, on_epoch_start, on_batch, on_epoch), progress


def print_report(report: "TrainReport") -> None:
    if report.skipped_without_teacher:
        console.print(f"{report.skipped_without_teacher} images had no teacher row and were left out.")
    if report.val_protocol:
        console.print(f"Validation: {report.val_protocol}.")
    console.print(f"{report.epochs_run} epochs done in {report.seconds:.0f} s ({len(report.history)} in all); "
                  f"checkpoint {report.out / 'last.pt'} (use it as --model), log {report.out / 'loss.csv'}.",
                  markup=False, highlight=False)
