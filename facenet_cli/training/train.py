"""`facenet train`: triplet training (and distillation from a teacher) of the nn4 networks.

Each batch is P people x K images (PKBatchSampler), randomly mirrored, embedded, mined for
triplets and scored with FaceNet's triplet loss, plus `distill_weight` times the distance to
a teacher's centred embeddings when a teacher reps folder is given.

Reproducibility: the batch order, the mirroring and the miner's draws are seeded from
(seed, epoch, batch) alone, and every epoch ends with a checkpoint holding the weights, the
optimizer state and the history, so `resume` replays the remaining epochs exactly as an
uninterrupted run would (bit for bit on the CPU).

WORKDIR gets, every epoch: `checkpoint-epochNNN.pt` (record + weights, usable as --model),
`loss.csv`, `loss.png`, and last `last.pt` (the same plus everything needed to resume). All are
written atomically (facenet_cli/formats/checkpoints.py, facenet_cli/atomic.py), and `last.pt` is written
last: it is the commit point of an epoch, so a run killed anywhere resumes from the last epoch
whose files are all complete, and a full disk leaves the previous `last.pt` as it was.

Under torchrun (WORLD_SIZE > 1) the same loop runs on every process with DistributedDataParallel
(facenet_cli/training/distributed.py): each rank embeds its share of the global batch, and the
loss, the triplets and the batch-norm statistics are those of the global batch.
"""
from __future__ import annotations

import csv
import io
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..atomic import remove_stale_temps, write_text_atomic
from ..models.catalogue import ModelRecord
from ..formats.checkpoints import MODEL_KEYS, RESUME_KEYS, load_checkpoint, save_checkpoint
from ..nets.embedder import pick_device
from ..errors import DataError, UsageError, write_error
from ..evaluate.lfw import pair_distances
from ..evaluate.verification import PairDistances, evaluate_distances
from ..nets.nn4 import ARCHITECTURE_NAMES, FaceNetInception, default_record
from ..formats.reps import Reps
from .distributed import (Distributed, OtherRankFailed, check_divisible, distributed_session, env_world_size,
                          rank_device, share, wrap_ddp)
from .data import DEFAULT_CACHE_LIMIT, TrainingSet, ValidationSet, load_training_set, load_validation_set
from .losses import distillation_loss, triplet_loss
from .miners import MINERS, OpenFaceTripletMiner, make_miner
from .samplers import PKBatchSampler

LAST = "last.pt"
LOSS_CSV = "loss.csv"
LOSS_PNG = "loss.png"
OPTIMIZERS = ("adam", "sgd")
CSV_COLUMNS = ("epoch", "loss", "triplet_loss", "distill_loss", "triplets_per_batch", "images_per_s", "seconds",
               "val_accuracy", "val_threshold")


@contextmanager
def ctrl_c_after_block() -> Iterator[None]:
    """Ctrl-C waits for the block, then stops the run as usual (KeyboardInterrupt).

    A SIGINT that lands inside a checkpoint write, or inside the first import of matplotlib for
    the loss plot, would turn a clean stop into a crash ("ImportError: initialization failed").
    Only where Python's own handler is in place (main thread, not ignored) is anything changed.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    caught: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if caught:
        raise KeyboardInterrupt


@dataclass
class TrainConfig:
    """Everything a run depends on; stored in every checkpoint as a plain dict."""

    aligned: str
    out: str
    architecture: str | None = None  # None: nn4.small2, or the architecture of `init`
    init: str | None = None  # catalogue model or checkpoint to start from
    people_per_batch: int = 15
    images_per_person: int = 20
    alpha: float = 0.2
    optimizer: str = "adam"
    lr: float = 1e-3
    epochs: int = 10
    batches_per_epoch: int | None = None  # None: as many as the people allow (sampler's default)
    minutes: float | None = None  # stop after the epoch that crosses this wall-clock budget
    device: str = "auto"
    seed: int = 0
    miner: str = "openface"
    flip: bool = True  # mirror augmentation
    teacher_reps: str | None = None
    distill_weight: float = 1.0
    triplet_weight: float = 1.0
    # Extra random images per batch that only meet the distillation term: the P x K sampler
    # uses just the people with K or more images, a teacher can teach from every image.
    distill_images: int = 0
    val_pairs: str | None = None
    val_train_pairs: str | None = None
    val_aligned: str | None = None

    def check(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, not {self.optimizer!r}.")
        if self.miner not in MINERS:
            raise UsageError(f"--miner must be one of {', '.join(MINERS)}, not {self.miner!r}.")
        if self.architecture is not None and self.architecture not in ARCHITECTURE_NAMES:
            raise UsageError(f"--arch must be one of {', '.join(ARCHITECTURE_NAMES)}, not {self.architecture!r}; "
                             "use --init to start from trained weights.")
        if self.epochs < 0 or (self.batches_per_epoch is not None and self.batches_per_epoch < 1):
            raise UsageError("--epochs must be 0 or more and --batches-per-epoch at least 1.")
        if not (self.lr > 0 and self.alpha >= 0 and self.distill_weight >= 0 and self.triplet_weight >= 0):
            raise UsageError("--lr must be positive and --alpha, --distill-weight, --triplet-weight not negative.")
        if self.distill_images < 0 or (self.distill_images and self.teacher_reps is None):
            raise UsageError("--distill-images needs --teacher-reps and must not be negative.")
        if self.teacher_reps is None and self.triplet_weight == 0:
            raise UsageError("--triplet-weight 0 leaves nothing to learn without --teacher-reps; give a teacher or a weight.")
        if (self.val_pairs is None) != (self.val_aligned is None):
            raise UsageError("--val-pairs and --val-aligned go together; give both or neither.")
        if self.val_train_pairs is not None and self.val_pairs is None:
            raise UsageError("--val-train-pairs needs --val-pairs and --val-aligned too.")


@dataclass
class BatchStats:
    epoch: int
    batch: int
    batches: int
    loss: float
    triplets: int
    images_per_s: float


@dataclass
class EpochRow:
    epoch: int
    loss: float
    triplet_loss: float
    distill_loss: float
    triplets_per_batch: float
    images_per_s: float
    seconds: float
    val_accuracy: float | None = None
    val_threshold: float | None = None


@dataclass
class TrainReport:
    out: Path
    record: ModelRecord
    history: list[EpochRow]
    images: int
    people: int
    skipped_without_teacher: int
    val_protocol: str | None
    seconds: float
    checkpoint: Path | None = None
    epochs_run: int = 0  # epochs trained by this call (a resume continues an earlier count)

    def to_dict(self) -> dict:
        """What `facenet train --json` prints."""
        last = self.history[-1] if self.history else None
        return {
            "out": str(self.out), "model": self.record.name, "architecture": self.record.architecture,
            "epochs": last.epoch if last else 0, "epochs_this_run": self.epochs_run,
            "seconds": round(self.seconds, 3), "images": self.images, "people": self.people,
            "final_loss": last.loss if last else None,
            "val_accuracy": last.val_accuracy if last else None, "val_protocol": self.val_protocol,
            "threshold": self.record.threshold, "skipped_without_teacher": self.skipped_without_teacher,
            "last": str(self.out / LAST), "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "loss_csv": str(self.out / LOSS_CSV), "loss_png": str(self.out / LOSS_PNG),
            "history": [asdict(row) for row in self.history],
        }


@dataclass
class Callbacks:
    on_start: Callable[[int, int, int], None] | None = None  # (images, people, first epoch)
    on_epoch_start: Callable[[int, int], None] | None = None  # (epoch, batches)
    on_batch: Callable[[BatchStats], None] | None = None
    on_epoch: Callable[[EpochRow], None] | None = None


# ---------------------------------------------------------------- seeds


def batch_seed(seed: int, epoch: int, batch: int, stream: int) -> int:
    """A seed that depends only on (seed, epoch, batch) and which random stream wants it."""
    return ((seed * 1_000_003 + epoch) * 1_000_033 + batch) * 7 + stream


# ---------------------------------------------------------------- model and records


def start_record(config: TrainConfig) -> tuple[ModelRecord, dict | None]:
    """The architecture's record and, with --init, the weights to start from."""
    if config.init is None:
        return default_record(config.architecture or "nn4.small2"), None
    from ..models.hub import weights_path
    from ..pipeline.face_pipeline import resolve_record

    record = resolve_record(config.init)
    if record.architecture not in ARCHITECTURE_NAMES:
        raise UsageError(f"--init {config.init} is a {record.architecture} model, which facenet train cannot train; "
                         f"start from an nn4-family checkpoint ({', '.join(ARCHITECTURE_NAMES)}).")
    if config.architecture is not None and config.architecture != record.architecture:
        raise UsageError(f"--init {config.init} holds a {record.architecture} network, not {config.architecture}; "
                         f"drop --arch or pass --arch {record.architecture}.")
    state = load_checkpoint(weights_path(record), keys=("state_dict",))["state_dict"]
    base = default_record(record.architecture, record.embedding_dim)
    return replace(base, align=record.align), state


def epoch_record(base: ModelRecord, config: TrainConfig, epoch: int, threshold: float | None,
                 lfw: dict | None) -> ModelRecord:
    workdir = Path(config.out).resolve().name
    how = "distilled from a teacher and triplet-trained" if config.teacher_reps else "triplet-trained"
    return replace(
        base, name=f"{base.architecture}@{workdir}-epoch{epoch}", weights=None,
        threshold=threshold if threshold is not None else base.threshold, lfw=dict(lfw or {}),
        description=f"{base.architecture} {how} by `facenet train` for {epoch} epochs on {config.aligned}.")


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9)
    return torch.optim.Adam(params, lr=config.lr)


# ---------------------------------------------------------------- checkpoints and logs


def write_loss_csv(path: Path, history: list[EpochRow]) -> None:
    buffer = io.StringIO()
    out = csv.writer(buffer, lineterminator="\n")
    out.writerow(CSV_COLUMNS)
    for row in history:
        values = asdict(row)
        out.writerow(["" if values[c] is None else (f"{values[c]:.6g}" if isinstance(values[c], float) else values[c])
                      for c in CSV_COLUMNS])
    write_text_atomic(path, buffer.getvalue())


def read_loss_history(rows: list[dict]) -> list[EpochRow]:
    return [EpochRow(**row) for row in rows]


# ---------------------------------------------------------------- validation


def embed_images(model: torch.nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 128) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = to_input(images[start:start + batch_size], device)
            out.append(model(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 128), dtype=np.float32)


def validate(model: torch.nn.Module, val: ValidationSet, device: torch.device) -> tuple[float, float]:
    """(accuracy, threshold) of the current network on the validation pairs."""
    vectors = embed_images(model, val.images.batch(range(len(val.images))), device)
    reps = Reps(paths=val.keys, labels=np.zeros(len(val.keys), dtype=np.int64), embeddings=vectors)
    # Every pair person was checked to be aligned (load_validation_set); one without a face
    # found has no row here and their pairs count as wrong answers.
    people = set(val.test.name1 + val.test.name2) | (set(val.train.name1 + val.train.name2) if val.train else set())
    test = pair_distances(val.test, reps, processed=people)
    train: PairDistances | None = pair_distances(val.train, reps, processed=people) if val.train is not None else None
    result = evaluate_distances(test, val.folds, train)
    return result.accuracy_mean, float(np.mean([f.threshold for f in result.folds]))


# ---------------------------------------------------------------- the loop


def to_input(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NHWC -> float NCHW whose memory is already channels_last (the fast layout on CPU)."""
    return images.to(device).permute(0, 3, 1, 2).float()


def mirror_mask(count: int, generator: torch.Generator) -> torch.Tensor:
    """Which of `count` images to flip: each with probability 1/2 (drawn for the whole global batch,
    so that every rank of a distributed run flips its share as a single process would)."""
    return torch.rand(count, generator=generator) < 0.5


def mirror(images: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """The NHWC images flipped left-right where `flip` is true."""
    return torch.where(flip[:, None, None, None], images.flip(2), images)


class Trainer:
    def __init__(self, config: TrainConfig, callbacks: Callbacks | None = None,
                 cache_limit: int = DEFAULT_CACHE_LIMIT, session: Distributed | None = None):
        config.check()
        self.config = config
        self.session = session
        # Only rank 0 reports; the other ranks train silently beside it.
        self.callbacks = (callbacks if session is None or session.is_main else None) or Callbacks()
        self.device = rank_device(pick_device(config.device), session)
        if session is not None:
            check_divisible(config.people_per_batch, config.images_per_person, config.distill_images,
                            session.world_size)
        self.base, init_state = start_record(config)
        self.out = Path(config.out)
        # Every input is checked before the network is built or a file written.
        self.data: TrainingSet = load_training_set(config.aligned, self.base, config.people_per_batch,
                                                   config.images_per_person, config.teacher_reps, cache_limit)
        self.val: ValidationSet | None = None
        if config.val_pairs is not None:
            self.val = load_validation_set(config.val_pairs, config.val_aligned, self.base, config.val_train_pairs)
        torch.manual_seed(config.seed)  # the initial weights
        self.model = FaceNetInception(self.base.architecture, self.base.embedding_dim)
        if init_state is not None:
            self.model.load_state_dict(init_state)
        self.model.to(self.device, memory_format=torch.channels_last)
        # What the batches go through: the network itself, or its DDP wrapper (same parameters).
        self.net = self.model if session is None else wrap_ddp(self.model, session, self.device)
        self.optimizer = make_optimizer(config, self.model.parameters())
        self.sampler = PKBatchSampler(self.data.labels.tolist(), config.people_per_batch, config.images_per_person,
                                      seed=config.seed, batches_per_epoch=config.batches_per_epoch)
        self.miner = make_miner(config.miner, config.alpha, config.seed)
        self.triplet_loss = triplet_loss(config.alpha)
        self.history: list[EpochRow] = []
        self.epoch = 0  # epochs completed

    # -- resume

    def restore(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["state_dict"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.epoch = int(checkpoint["epoch"])
        self.history = read_loss_history(checkpoint["history"])
        torch.set_rng_state(checkpoint["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in checkpoint["rng"]:
            torch.cuda.set_rng_state(checkpoint["rng"]["cuda"])

    # -- one epoch

    def local_positions(self, pk: int, extra: int) -> list[int]:
        """Positions in the global batch (P x K images, then the extra images) this rank embeds."""
        if self.session is None:
            return list(range(pk + extra))
        rank, world = self.session.rank, self.session.world_size
        return list(range(pk))[share(pk, rank, world)] + list(range(pk, pk + extra))[share(extra, rank, world)]

    def train_epoch(self, epoch: int) -> EpochRow:
        cfg, model, net = self.config, self.model, self.net
        net.train()
        self.sampler.set_epoch(epoch)
        batches = len(self.sampler)
        if self.callbacks.on_epoch_start:
            self.callbacks.on_epoch_start(epoch, batches)
        started = time.perf_counter()
        sums = {"loss": 0.0, "triplet": 0.0, "distill": 0.0, "triplets": 0}
        seen = 0
        for b, pk_indices in enumerate(self.sampler):
            indices = list(pk_indices)  # the global batch: the same on every rank
            if cfg.distill_images:
                extra = torch.randint(len(self.data.images), (cfg.distill_images,),
                                      generator=torch.Generator().manual_seed(batch_seed(cfg.seed, epoch, b, 3)))
                indices += extra.tolist()
            pk = len(pk_indices)
            mine = self.local_positions(pk, len(indices) - pk)
            images = self.data.images.batch([indices[i] for i in mine])
            if cfg.flip:
                flips = mirror_mask(len(indices), torch.Generator().manual_seed(batch_seed(cfg.seed, epoch, b, 1)))
                images = mirror(images, flips[mine])
            labels = self.data.labels[pk_indices].to(self.device)
            if isinstance(self.miner, OpenFaceTripletMiner):
                self.miner.generator.manual_seed(batch_seed(cfg.seed, epoch, b, 2))
            all_embeddings = net(to_input(images, self.device))
            if self.session is not None:
                all_embeddings = self.session.gather_batch(all_embeddings, pk // self.session.world_size)
            embeddings = all_embeddings[:pk]  # triplets only among the P x K images
            triplets = self.miner(embeddings, labels)
            loss_triplet = self.triplet_loss(embeddings, labels, indices_tuple=triplets)
            loss = cfg.triplet_weight * loss_triplet
            loss_distill = torch.zeros(())
            if self.data.teacher is not None:
                loss_distill = distillation_loss(all_embeddings, self.data.teacher[indices].to(self.device))
                loss = loss + cfg.distill_weight * loss_distill
            if not torch.isfinite(loss):
                raise DataError(f"The loss became {loss.item()} in epoch {epoch} batch {b + 1}; lower --lr.")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            seen += len(indices)
            sums["loss"] += loss.item()
            sums["triplet"] += loss_triplet.item()
            sums["distill"] += loss_distill.item()
            sums["triplets"] += len(triplets[0])
            if self.callbacks.on_batch:
                self.callbacks.on_batch(BatchStats(epoch, b + 1, batches, loss.item(), len(triplets[0]),
                                                   seen / max(time.perf_counter() - started, 1e-9)))
        seconds = time.perf_counter() - started
        row = EpochRow(epoch=epoch, loss=sums["loss"] / batches, triplet_loss=sums["triplet"] / batches,
                       distill_loss=sums["distill"] / batches, triplets_per_batch=sums["triplets"] / batches,
                       images_per_s=seen / seconds, seconds=seconds)
        if self.val is not None and (self.session is None or self.session.is_main):
            row.val_accuracy, row.val_threshold = validate(model, self.val, self.device)
        return row

    # -- saving

    def record(self) -> ModelRecord:
        last = self.history[-1] if self.history else None
        lfw = None
        if last is not None and last.val_accuracy is not None:
            lfw = {"val_accuracy": last.val_accuracy, "val_protocol": self.val.protocol, "epoch": last.epoch}
        return epoch_record(self.base, self.config, self.epoch, last.val_threshold if last else None, lfw)

    def save(self) -> Path:
        with ctrl_c_after_block():
            return self._save()

    def _save(self) -> Path:
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(exc, self.out) from None
        record = self.record().to_dict()
        weights = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state()
        # last.pt goes last: it says which epoch is done, so everything it stands for must be
        # on disk before it; a crash in between only redoes that epoch's files.
        epoch_checkpoint = {"record": record, "state_dict": weights, "epoch": self.epoch}
        path = save_checkpoint(self.out / f"checkpoint-epoch{self.epoch:03d}.pt", epoch_checkpoint)
        write_loss_csv(self.out / LOSS_CSV, self.history)
        if self.history:
            from ..evaluate.plots import plot_training  # matplotlib only when there is something to draw

            plot_training(self.history, [self.out / LOSS_PNG])
        save_checkpoint(self.out / LAST, {**epoch_checkpoint, "optimizer": self.optimizer.state_dict(), "rng": rng,
                                          "config": asdict(self.config),
                                          "history": [asdict(r) for r in self.history]})
        return path

    def commit(self) -> Path:
        """save() on rank 0; under torchrun the other ranks learn whether it worked and stop with it."""
        if self.session is None:
            return self.save()
        failed = 0
        path = self.out / f"checkpoint-epoch{self.epoch:03d}.pt"
        try:
            if self.session.is_main:
                path = self.save()
        except BaseException:
            failed = 1
            raise
        finally:
            if self.session.from_main(failed) and not self.session.is_main:
                raise OtherRankFailed(f"Rank 0 could not write the epoch {self.epoch} checkpoint into {self.out} "
                                      "(its message says why); this rank stops with it.")
        return path

    def out_of_time(self, started: float) -> bool:
        """--minutes spent? Rank 0's clock decides for every rank."""
        cfg = self.config
        spent = cfg.minutes is not None and time.perf_counter() - started >= cfg.minutes * 60
        return bool(self.session.from_main(int(spent))) if self.session is not None else spent

    # -- the run

    def run(self) -> TrainReport:
        cfg = self.config
        started = time.perf_counter()
        first_epoch = self.epoch
        if self.session is None or self.session.is_main:
            remove_stale_temps(self.out, recursive=False)  # what a killed run was writing
        if self.callbacks.on_start:
            self.callbacks.on_start(len(self.data.images), len(self.data.people), self.epoch + 1)
        checkpoint = None
        if self.epoch == 0:
            checkpoint = self.commit()  # epoch 0: the starting network, and proof OUT is writable
        while self.epoch < cfg.epochs:
            if self.out_of_time(started):
                break
            row = self.train_epoch(self.epoch + 1)
            self.epoch += 1
            self.history.append(row)
            checkpoint = self.commit()
            if self.callbacks.on_epoch:
                self.callbacks.on_epoch(row)
        return TrainReport(out=self.out, record=self.record(), history=list(self.history),
                           images=len(self.data.images), people=len(self.data.people),
                           skipped_without_teacher=self.data.skipped_without_teacher,
                           val_protocol=self.val.protocol if self.val else None,
                           seconds=time.perf_counter() - started,
                           checkpoint=checkpoint or self.out / f"checkpoint-epoch{self.epoch:03d}.pt",
                           epochs_run=self.epoch - first_epoch)


def check_new_run(config: TrainConfig, world_size: int) -> None:
    """The checks of a new run that need no data: options, the split over the processes, OUT.

    Under torchrun (or `--nproc-per-node`) they come before the process group, so a usage error
    ends every rank at once (rank 0 says it) instead of after the rendezvous."""
    config.check()
    if world_size > 1:
        check_divisible(config.people_per_batch, config.images_per_person, config.distill_images, world_size)
    out = Path(config.out)
    if (out / LAST).exists():
        raise UsageError(f"{out} already holds a training run; resume it with `facenet train --resume {out}` "
                         "or give another OUT folder.")


def check_resume_dir(workdir: str | Path) -> None:
    workdir = Path(workdir)
    if not (workdir / LAST).is_file():
        raise UsageError(f"{workdir} holds no {LAST}; give the OUT folder of an earlier `facenet train` run.")


def check_ranks_fit(device: str | None, nproc: int) -> None:
    """N processes on GPUs need N GPUs (each rank takes cuda:LOCAL_RANK)."""
    if device == "cpu" or nproc <= 1 or (device in (None, "auto") and not torch.cuda.is_available()):
        return
    gpus = torch.cuda.device_count()
    if gpus < nproc:
        raise UsageError(f"--nproc-per-node {nproc} on GPUs needs {nproc} of them (one each), but {gpus} "
                         f"{'is' if gpus == 1 else 'are'} visible; give --nproc-per-node {max(gpus, 1)} or --device cpu.")


def train(config: TrainConfig, callbacks: Callbacks | None = None,
          cache_limit: int = DEFAULT_CACHE_LIMIT) -> TrainReport:
    """Train from scratch (or from --init) into config.out; refuses a folder that holds a run."""
    check_new_run(config, env_world_size())
    with distributed_session(pick_device(config.device)) as session:
        return Trainer(config, callbacks, cache_limit, session).run()


def resume(workdir: str | Path, epochs: int | None = None, minutes: float | None = None,
           callbacks: Callbacks | None = None, cache_limit: int = DEFAULT_CACHE_LIMIT,
           device: str | None = None) -> TrainReport:
    """Continue the run in WORKDIR from its last complete epoch, up to `epochs` (default: as configured).

    Only the total of epochs, the time budget and the device may change; on the same device
    with the same thread count the result is bit-identical to an uninterrupted run.
    """
    workdir = Path(workdir)
    check_resume_dir(workdir)
    try:
        checkpoint = load_checkpoint(workdir / LAST, keys=MODEL_KEYS + RESUME_KEYS, fresh=True)
    except DataError as exc:
        raise DataError(f"{exc} (Cannot resume: the earlier epochs' checkpoint-epochNNN.pt files in {workdir} "
                        "still work as --model or --init.)") from None
    known = TrainConfig.__dataclass_fields__
    config = TrainConfig(**{k: v for k, v in checkpoint["config"].items() if k in known})
    config = replace(config, out=str(workdir), epochs=epochs if epochs is not None else config.epochs,
                     minutes=minutes, device=device if device is not None else config.device)
    config.check()
    world_size = env_world_size()
    if world_size > 1:  # before the process group, as for a new run
        check_divisible(config.people_per_batch, config.images_per_person, config.distill_images, world_size)
    with distributed_session(pick_device(config.device)) as session:
        trainer = Trainer(config, callbacks, cache_limit, session)
        trainer.restore(checkpoint)  # every rank loads the same file, so they continue in step
        return trainer.run()


__all__ = ["BatchStats", "Callbacks", "EpochRow", "TrainConfig", "TrainReport", "Trainer",
           "batch_seed", "check_new_run", "check_ranks_fit", "check_resume_dir", "resume", "train"]
