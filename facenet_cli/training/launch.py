"""`facenet train --nproc-per-node N`: N training processes on this machine that meet through a
file, so that nothing listens on a port for them.

torchrun's rendezvous store (a TCPStore in its `pt_elastic` agent) listens on every interface at
its port for the whole run, unauthenticated, whatever --master-addr says. Here the launcher (the
command's own process) makes a private folder (mode 0700), writes the job into it, and starts N
copies of the rank command with RANK, LOCAL_RANK, WORLD_SIZE and the path of a FileStore in that
folder (distributed.STORE_ENV) in their environment; distributed_session initialises the process
group from that file. gloo's own connections between the ranks stay on the loopback interface
(distributed.keep_gloo_on_loopback).

Each rank runs in its own session: the terminal's Ctrl-C reaches the launcher only, which passes
one SIGINT on to every rank (rank 0 then says how to resume). A rank whose launcher dies is
killed with it (Linux's PR_SET_PDEATHSIG). Only rank 0 prints; when a rank fails, rank 0 (which
hits the same error, or waits on the failed rank) gets GRACE_S seconds to end on its own before
the others are stopped, and the launcher's exit code is rank 0's.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

from ..errors import FacenetError
from .distributed import STORE_ENV

JOB_ENV = "FACENET_TRAIN_JOB"  # the job file (JSON) each rank reads
LAUNCHER_ENV = "FACENET_TRAIN_LAUNCHER"  # the launcher's pid: a rank started after it died stops
GRACE_S = 20.0  # after a rank fails (or Ctrl-C), how long the others get to end on their own
POLL_S = 0.05
FAILED = "failed"  # written into the private folder when a rank fails: the others lost a peer
# A rank's exit code for "a peer died under me" (its collective broke): quiet, the launcher says it.
PEER_LOST = 3


class RankFailed(FacenetError):
    """A rank ended without rank 0 saying why (killed, out of memory); the others were stopped."""


def _threads_per_rank(nproc: int) -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // nproc)


def launch(command: list[str], nproc: int, job: dict, resume_hint: str = "") -> int:
    """Run `command` as ranks 0..nproc-1 of one job; the exit code to end with.

    `resume_hint` ends the sentence of a rank that failed silently ("; resume with ...").

    Rank 0's own non-zero exit code when it ended by itself (it printed its sentence); 0 when
    every rank finished; RankFailed when another rank ended first and rank 0 said nothing."""
    folder = tempfile.mkdtemp(prefix="facenet-train-")  # 0700: the store is nobody else's
    ranks: list[subprocess.Popen] = []
    try:
        job_file = os.path.join(folder, "job.json")
        with open(job_file, "w", encoding="utf-8") as stream:
            json.dump(job, stream)
        env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "MASTER_PORT")}
        env.update({"WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc), STORE_ENV: os.path.join(folder, "store"),
                    JOB_ENV: job_file, LAUNCHER_ENV: str(os.getpid())})
        # N processes on the cores: without a limit each would start a thread per core.
        env.setdefault("OMP_NUM_THREADS", str(_threads_per_rank(nproc)))
        # The ranks start with Ctrl-C ignored (inherited) and take it back in rank_setup, once
        # they can answer it with the command's sentence rather than an import's traceback.
        previous = _set_sigint(signal.SIG_IGN)
        try:
            for rank in range(nproc):
                ranks.append(subprocess.Popen(command, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                              start_new_session=True))
        finally:
            _set_sigint(previous)
        return _wait(ranks, resume_hint, os.path.join(folder, FAILED))
    finally:
        _stop(ranks, signal.SIGKILL, 0)  # only what is left after _wait: nothing, normally
        shutil.rmtree(folder, ignore_errors=True)


def _set_sigint(handler):
    """Set SIGINT's handler; the one before (None where nothing could be set or was known)."""
    if handler is None:
        return None
    try:
        return signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: signals are not ours to set
        return None


def _wait(ranks: list[subprocess.Popen], resume_hint: str, marker: str) -> int:
    failed_at = None  # when the first rank failed
    first = None  # (rank, exit code) of the first rank seen failing
    interrupted = False
    while True:
        try:
            codes = [rank.poll() for rank in ranks]
            if all(code is not None for code in codes):
                break
            if failed_at is None and any(code not in (None, 0) for code in codes):
                failed_at = time.monotonic()
                first = next((r, c) for r, c in enumerate(codes) if c not in (None, 0))
                with open(marker, "w", encoding="utf-8") as stream:  # the others' broken collectives say why
                    stream.write(f"{first[0]} {first[1]}\n")
            if failed_at is not None and time.monotonic() - failed_at > GRACE_S:
                _stop(ranks, signal.SIGTERM, 5.0)
                _stop(ranks, signal.SIGKILL, 5.0)
                break
            time.sleep(POLL_S)
        except KeyboardInterrupt:
            if interrupted:  # a second Ctrl-C: stop now
                _stop(ranks, signal.SIGKILL, 5.0)
                break
            interrupted = True
            failed_at = failed_at or time.monotonic()
            _stop(ranks, signal.SIGINT, 0)
    codes = [rank.returncode for rank in ranks]
    if codes[0] is not None and codes[0] > 0 and codes[0] != PEER_LOST:
        return codes[0]  # rank 0 printed why (or, after Ctrl-C, how to resume)
    if interrupted:
        raise KeyboardInterrupt  # rank 0 said nothing: the command says it
    if all(code == 0 for code in codes):
        return 0
    rank, code = first if first is not None and first[1] != PEER_LOST else next(
        ((r, c) for r, c in enumerate(codes) if c not in (0, PEER_LOST)), (0, codes[0]))
    if code is not None and code < 0:
        how = f"was killed by {signal.Signals(-code).name} (out of memory, or killed?)"
    else:
        how = f"stopped with exit code {code}"
    raise RankFailed(f"Training process {rank} of {len(ranks)} {how} and the others were stopped with "
                     f"it{resume_hint}.")


def _stop(ranks: list[subprocess.Popen], signum: int, wait_s: float) -> None:
    """Send `signum` to the ranks still running and give them `wait_s` seconds to end."""
    for rank in ranks:
        if rank.poll() is None:
            try:
                rank.send_signal(signum)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + wait_s
    for rank in ranks:
        try:
            rank.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass


def rank_setup() -> None:
    """In a rank, first thing: die with the launcher (a killed launcher leaves no rank training),
    and answer Ctrl-C (the launcher passes it on) from now on."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the ranks end when the store times out
        return
    if str(os.getppid()) != os.environ.get(LAUNCHER_ENV, str(os.getppid())):
        os._exit(1)  # the launcher died before prctl took effect


def peer_lost(wait_s: float = 3.0) -> bool:
    """In a rank whose collective broke: did another rank fail (the launcher's marker appears
    within `wait_s`)? Then this rank ends quietly with PEER_LOST and the launcher says which."""
    store = os.environ.get(STORE_ENV)
    if not store:
        return False
    marker = os.path.join(os.path.dirname(store), FAILED)
    deadline = time.monotonic() + wait_s
    while not os.path.exists(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
    return True


def read_job() -> dict:
    with open(os.environ[JOB_ENV], encoding="utf-8") as stream:
        return json.load(stream)


__all__ = ["GRACE_S", "JOB_ENV", "PEER_LOST", "RankFailed", "launch", "peer_lost", "rank_setup", "read_job"]
