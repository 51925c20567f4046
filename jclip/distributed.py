"""Several processes, one result: rank and world helpers over Jittor's MPI.

``mpirun -np N python -m jclip...`` starts N ranks of the same command.
Jittor initialises MPI itself when it finds OpenMPI's variables in the
environment (``jt.in_mpi``, ``jt.rank``, ``jt.world_size``, ``jt.mpi``);
this module reads the same variables, so asking for the rank never imports
Jittor, and without mpirun every helper is a no-op (rank 0 of 1).

The data moves with ``jt.mpi.broadcast`` of raw bytes: a gather is one
broadcast per rank (each rank receives every part), so any dtype arrives
bit for bit - features gathered from N ranks equal the one-process ones.

The pattern the commands use is ``drive``: rank 0 runs the step (the feature
cache, the bookkeeping) and every call it makes to the encoder is split over
all ranks in equal contiguous shards, aligned to the encoder's batches so
each forward pass sees the very batch a single process would have given it.

A rank that fails must not leave the others waiting in a collective:
``failures_end_the_run`` prints ``error: rank R of N: ...`` and ends the
process without MPI's orderly exit, which makes mpirun stop every rank.
"""
import contextlib
import glob
import io
import json
import os
import sys
import traceback
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

T = TypeVar("T")

# the variables OpenMPI's launcher sets (Jittor's own test for "inside mpirun")
_SIZE, _RANK, _LOCAL = "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"
_alone = False      # rank 0 after ``leave``: the others are gone


def in_mpi() -> bool:
    """True when this process was started by mpirun (even with -np 1) and
    works with the other ranks (not after ``leave``)."""
    return _SIZE in os.environ and not _alone


def world_size() -> int:
    """Number of ranks working together (1 without mpirun, or after ``leave``)."""
    return 1 if _alone else int(os.environ.get(_SIZE, 1))


def rank() -> int:
    """This process's rank, 0..world_size()-1 (0 without mpirun)."""
    return 0 if _alone else int(os.environ.get(_RANK, 0))


def local_rank() -> int:
    """This process's rank among the ranks on its host (picks its GPU)."""
    return int(os.environ.get(_LOCAL, rank()))


def is_root() -> bool:
    """True on the rank that writes outputs (rank 0; the only one without mpirun)."""
    return rank() == 0


def where() -> str:
    """'rank R of N' as mpirun started it (for messages)."""
    return f"rank {os.environ.get(_RANK, 0)} of {os.environ.get(_SIZE, 1)}"


def pick_gpu() -> Optional[str]:
    """Under mpirun, give this rank GPU ``local_rank mod number of GPUs``.

    Must run before Jittor is imported (it sets CUDA_VISIBLE_DEVICES; a list
    the user set is honoured: the rank takes its entry).
    Returns: the device id chosen, or None (no MPI, or no GPU).
    """
    if not in_mpi():
        return None
    given = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    devices = given or sorted(os.path.basename(p)[len("nvidia"):]
                              for p in glob.glob("/dev/nvidia[0-9]*"))
    if not devices:
        return None
    chosen = devices[local_rank() % len(devices)].strip()
    os.environ["CUDA_VISIBLE_DEVICES"] = chosen
    return chosen


def _mpi():
    """Jittor's MPI module; a clear error when Jittor was built without MPI."""
    import jclip  # noqa: F401  (Jittor's safe defaults before jittor)
    import jittor as jt
    if jt.mpi is None or not jt.in_mpi:
        raise RuntimeError(f"{where()}: started by mpirun, but Jittor has no MPI "
                           "(it needs `mpicc` when it is imported: apt-get install libopenmpi-dev)")
    return jt.mpi


def barrier() -> None:
    """Wait for every rank (no-op without mpirun)."""
    if world_size() > 1:
        _mpi().mpi_barrier()


def broadcast_bytes(data: Optional[bytes], root: int = 0) -> bytes:
    """``data`` of rank ``root``, on every rank (others pass None)."""
    if world_size() == 1:
        return bytes(data or b"")
    mpi = _mpi()
    size = np.array([len(data) if rank() == root else 0], np.int64)
    mpi.broadcast(size, root)
    if size[0] == 0:
        return b""
    buf = (np.frombuffer(data, np.uint8).copy() if rank() == root
           else np.empty(int(size[0]), np.uint8))
    mpi.broadcast(buf, root)
    return buf.tobytes()


def broadcast_object(obj: Any, root: int = 0) -> Any:
    """A JSON-able object of rank ``root``, on every rank."""
    data = json.dumps(obj).encode() if rank() == root else None
    return json.loads(broadcast_bytes(data, root).decode())


def allgather_bytes(data: bytes) -> List[bytes]:
    """Every rank's ``data``, in rank order, on every rank."""
    return [broadcast_bytes(data if r == rank() else None, r) for r in range(world_size())]


def allgather_object(obj: Any) -> List[Any]:
    """Every rank's JSON-able ``obj``, in rank order, on every rank."""
    return [json.loads(b.decode()) for b in allgather_bytes(json.dumps(obj).encode())]


def array_bytes(a: np.ndarray) -> bytes:
    """An array as .npy bytes (dtype and shape kept; no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def array_from_bytes(data: bytes) -> np.ndarray:
    """The array of ``array_bytes``."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def allgather_rows(local: Optional[np.ndarray]) -> np.ndarray:
    """Every rank's rows, concatenated in rank order, bit for bit, on every rank.

    Parameters: local: this rank's (n_r, ...) array, or None for no rows (every
    rank that has rows: the same dtype and trailing shape).
    Returns: (sum n_r, ...); (0,) float32 when no rank had rows.
    """
    if world_size() == 1:
        return np.zeros(0, np.float32) if local is None else local
    sent = b"" if local is None else array_bytes(local)
    parts = [array_from_bytes(b) for b in allgather_bytes(sent) if b]
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def shard(n: int, unit: int = 1, of: Optional[Tuple[int, int]] = None) -> slice:
    """This rank's contiguous share of ``n`` items, cut at multiples of ``unit``.

    The ``ceil(n / unit)`` units are split as evenly as possible, the first
    ranks taking one more; a rank may get nothing when there are fewer units
    than ranks.  ``of=(rank, world)`` asks for another rank's share.
    """
    r, w = of if of is not None else (rank(), world_size())
    units = -(-n // max(1, unit))
    base, extra = divmod(units, w)
    start = r * base + min(r, extra)
    stop = start + base + (r < extra)
    return slice(min(n, start * unit), min(n, stop * unit))


def sharded(encode: Callable[[List[Any]], np.ndarray], items: Sequence[Any], unit: int = 1) -> np.ndarray:
    """``encode(items)`` with each rank encoding its ``shard`` (every rank calls
    it with the same items; a rank with an empty share does not call
    ``encode``); the rows gathered on every rank."""
    items = list(items)
    mine = items[shard(len(items), unit)]
    return allgather_rows(np.asarray(encode(mine)) if mine else None)


def drive(run: Callable[[Callable[[List[Any]], np.ndarray]], T],
          encode: Callable[[List[Any]], np.ndarray], unit: int = 1) -> Optional[T]:
    """Rank 0 runs ``run(encoder)``; each of its calls ``encoder(items)`` is
    split over all ranks (``sharded``), the other ranks serving those calls
    until rank 0 is done.  Without mpirun: ``run(encode)``.

    Parameters: run: rank 0's step, given the encoder to call; encode: list of
    JSON-able items (paths, prompts) -> (len, ...) array, run by every rank on
    its share; unit: shards are cut at multiples of this (the encoder's batch).
    Returns: run's result on rank 0, None on the others.
    """
    if world_size() == 1:
        return run(encode)
    if is_root():
        def encoder(items):
            items = list(items)
            broadcast_object(items)
            return sharded(encode, items, unit)
        result = run(encoder)
        broadcast_object(None)      # done: the other ranks return
        return result
    while True:
        items = broadcast_object(None)
        if items is None:
            return None
        sharded(encode, items, unit)


def leave() -> None:
    """The end of the work the ranks share: ranks other than 0 exit here
    (status 0); rank 0 goes on alone, with Jittor's MPI switched off, so its
    optimizers and datasets act as one process's (they would otherwise wait
    for the ranks that left).  A no-op without mpirun."""
    global _alone
    if not in_mpi():
        return
    if not is_root():
        raise Done()
    import jittor as jt
    _mpi().set_state(False)
    jt.in_mpi = jt.compile_extern.in_mpi = False
    _alone = True


class Done(SystemExit):
    """Ends a rank whose share of the work is over, with exit status 0 (rank 0
    goes on alone)."""

    def __init__(self) -> None:
        super().__init__(0)


def start() -> None:
    """What a command does first (before Jittor is imported): under mpirun,
    this rank's GPU (``pick_gpu``), on CPU every core and as many threads as
    one process (``same_threads``), and rank 0's output only (``quiet_others``)."""
    if pick_gpu() is None:
        same_threads()
    quiet_others()


def same_threads() -> Optional[int]:
    """Under mpirun on CPU, run like one process: on every core of the machine
    and with as many OpenMP threads (the CPU count, unless OMP_NUM_THREADS is
    set).

    mpirun binds each rank to fewer cores.  Jittor's CPU kernels sum in an
    order that depends on the thread count, so features would differ from one
    process's in the last bit; and threads crowded onto one core make rank
    0's solo work (the heads, the dog head) many times slower.  Setting
    OMP_NUM_THREADS yourself (e.g. cores / ranks) is faster while the ranks
    encode, at that price.  Must run before Jittor is imported.
    Returns: the thread count set, or None.
    """
    if not in_mpi():
        return None
    cpus = os.cpu_count() or 1
    try:
        os.sched_setaffinity(0, range(cpus))
    except (AttributeError, OSError):      # not Linux, or not allowed: keep mpirun's binding
        pass
    if "OMP_NUM_THREADS" in os.environ:
        return None
    os.environ["OMP_NUM_THREADS"] = str(cpus)
    return cpus


def end_run(message: str, status: int) -> None:
    """Print ``error: rank R of N: <message>`` and end this process at once
    with ``status`` (at least 1), so mpirun stops every rank."""
    print(f"error: {where()}: {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    # no MPI_Finalize: mpirun sees a rank end abnormally and stops the others
    os._exit(status or 1)


@contextlib.contextmanager
def failures_end_the_run() -> Iterator[None]:
    """Under mpirun, an exception or a non-zero exit inside the block prints
    ``error: rank R of N: ...`` and ends this process at once, so mpirun stops
    every rank (no rank is left waiting in a collective).  Without mpirun the
    block behaves as written."""
    if not in_mpi():
        yield
        return
    try:
        yield
    except SystemExit as e:
        if e.code in (None, 0):
            raise
        text = e.code if isinstance(e.code, str) else f"exit status {e.code}"
        end_run(text[len("error: "):] if text.startswith("error: ") else text,
                  e.code if isinstance(e.code, int) else 1)
    except BaseException as e:    # noqa: B902  (KeyboardInterrupt too: stop every rank)
        if os.environ.get("JCLIP_TRACEBACK") == "1":   # as jclip.commands.run: one line unless asked
            traceback.print_exc()
        end_run(f"{type(e).__name__}: {e}", 1)


def quiet_others() -> None:
    """Send the standard output of ranks other than 0 to /dev/null (rank 0
    prints the run's lines; errors and warnings on stderr stay)."""
    if in_mpi() and not is_root():
        sys.stdout = open(os.devnull, "w")
