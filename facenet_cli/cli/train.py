"""`facenet train ALIGNED OUT` / `facenet train --resume OUT`: triplet training (optionally
distilled) of an nn4-family network, checkpointing every epoch."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from ..choices import Architecture, Device, Miner, Optimizer
from ..errors import UsageError
from ._app import DeviceOption, JsonOption, QuietOption, command, console, err_console, print_json

if TYPE_CHECKING:
    from ..training.train import TrainReport

# Options that --resume may take (what `resume` accepts, plus the output format); the others
# come from the run's last.pt, and a different value would silently not apply, so it is refused.
_RESUME_OK = {"resume_dir", "epochs", "minutes", "device", "json_output", "quiet", "nproc_per_node"}
# What each rank of `facenet train --nproc-per-node N` runs (training/launch.py starts N of them).
_RANK_COMMAND = "from facenet_cli.cli.train import run_rank; run_rank()"


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
    flip: Annotated[bool, typer.Option("--mirror/--no-mirror", help="Mirror half the training images at random.")] = True,
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
    nproc_per_node: Annotated[Optional[int], typer.Option(
        "--nproc-per-node", min=1, metavar="N", help="Train with N processes on this machine (DistributedDataParallel: "
        "gloo on CPUs, nccl on N GPUs), started by facenet itself; they meet through a private file, so no port "
        "is opened. Several machines: torchrun.", show_default=False)] = None,
    json_output: JsonOption = False,
    quiet: QuietOption = False,
) -> None:
    """Train an nn4-family network with triplet loss on P x K batches, checkpointing every epoch.

    Example: facenet train aligned96/ run1 --arch nn4.small2 --epochs 20 --val-pairs lfw/pairsDevTest.txt --val-aligned lfw-96/

    Resume a stopped run (bit-identical to an uninterrupted one on the CPU): facenet train --resume run1 --epochs 40

    Several processes on this machine (DistributedDataParallel; gloo on CPUs, nccl on GPUs), each embedding its
    share of every P x K batch, no port opened: facenet train aligned96/ run1 --nproc-per-node 2 (only rank 0
    writes and prints; --resume run1 --nproc-per-node 2 continues). Several machines: torchrun ... -m facenet_cli
    train ... (docs/TRAINING.md: what torchrun opens).
    """
    from dataclasses import asdict

    from ..training.distributed import launched_by_torchrun
    from ..training.train import TrainConfig

    if resume_dir is not None:
        refuse_options_with_resume(ctx)
        given_device = ctx.get_parameter_source("device").name != "DEFAULT"
        job = {"resume": str(resume_dir), "epochs": epochs, "minutes": minutes,
               "device": device.value if given_device else None}
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
        job = {"config": asdict(config)}
    job["json"] = json_output
    job["quiet"] = quiet
    if nproc_per_node is not None and launched_by_torchrun():
        raise UsageError("--nproc-per-node starts facenet's own processes; under torchrun give the process count "
                         "to torchrun only.")
    if nproc_per_node is not None and nproc_per_node > 1:
        launch_ranks(job, nproc_per_node)
        return
    run_job(job)


def run_job(job: dict) -> None:
    """The training `job` (a new run, or a resumed one) in this process: alone, or as one rank of
    a distributed run, where only rank 0 reports."""
    from contextlib import nullcontext

    from ..training.distributed import env_rank
    from ..training.train import TrainConfig, resume, train

    main_process = env_rank() == 0
    callbacks, progress = progress_callbacks(job["json"], job["quiet"]) if main_process else (None, nullcontext())
    with progress:
        if "resume" in job:
            report = resume(job["resume"], job["epochs"], job["minutes"], callbacks, device=job["device"])
        else:
            report = train(TrainConfig(**job["config"]), callbacks)
    if not main_process:
        return
    if job["json"]:
        print_json(report.to_dict())
    else:
        print_report(report)


def launch_ranks(job: dict, nproc: int) -> None:
    """`--nproc-per-node N`: what can be checked here is checked before any rank starts (one
    sentence, once); then N ranks run `job`, and the command ends with rank 0's exit code."""
    import sys

    from ..training.launch import launch
    from ..training.train import TrainConfig, check_new_run, check_resume_dir, check_ranks_fit

    if "resume" in job:
        check_resume_dir(job["resume"])
        run, device = job["resume"], job["device"]
    else:
        config = TrainConfig(**job["config"])
        check_new_run(config, nproc)
        run, device = config.out, config.device
    check_ranks_fit(device, nproc)
    hint = f"; resume with `facenet train --resume {_quoted(run)} --nproc-per-node {nproc}`"
    code = launch([sys.executable, "-c", _RANK_COMMAND], nproc, job, resume_hint=hint)
    if code:
        raise typer.Exit(code)


def run_rank() -> None:
    """One rank of `facenet train --nproc-per-node N` (a process the launcher started): the job,
    with errors printed by rank 0 only (cli/_app.py) and the command's exit codes."""
    import sys

    from ..training.launch import PEER_LOST, peer_lost, rank_setup, read_job
    from ._app import INTERRUPTED, guarded

    rank_setup()
    job = read_job()
    run = {"resume_dir": job.get("resume"), "out": job.get("config", {}).get("out")}
    hint = INTERRUPTED["train"]
    try:
        guarded(run_job, interrupted=lambda **_: hint(**run) if callable(hint) else hint)(job)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception:
        if peer_lost():  # gloo's "connection closed by peer": the launcher names the rank that died
            sys.exit(PEER_LOST)
        raise


def _quoted(path) -> str:
    import shlex

    return shlex.quote(str(path))


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


def progress_callbacks(json_output: bool = False, quiet: bool = False):
    """The training's callbacks, and a context manager that ends their bar. The bar appears when
    training starts, so an error found first (a missing folder) stays one line on stderr."""
    from contextlib import contextmanager

    from ..training.train import BatchStats, Callbacks, EpochRow
    from ._progress import progress_bar

    progress = progress_bar(quiet)
    say = err_console if json_output else console  # --json: stdout holds the JSON document only
    task = [None]
    started: list[bool] = []

    def on_start(images: int, people: int, first_epoch: int) -> None:
        say.print(f"Training on {images} images of {people} people, from epoch {first_epoch}.",
                  markup=False, highlight=False)
        progress.start()
        started.append(True)

    @contextmanager
    def shown():
        try:
            yield
        finally:
            if started:  # (stopping a bar that never started prints an empty line)
                progress.stop()

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

    return Callbacks(on_start, on_epoch_start, on_batch, on_epoch), shown()


def print_report(report: "TrainReport") -> None:
    if report.skipped_without_teacher:
        console.print(f"{report.skipped_without_teacher} images had no teacher row and were left out.")
    if report.val_protocol:
        console.print(f"Validation: {report.val_protocol}.")
    console.print(f"{report.epochs_run} epochs done in {report.seconds:.0f} s ({len(report.history)} in all); "
                  f"checkpoint {report.out / 'last.pt'} (use it as --model), log {report.out / 'loss.csv'}.",
                  markup=False, highlight=False)
