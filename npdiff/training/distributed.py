"""Data-parallel training across processes and machines with MPI (mpi4py).

``mpiexec -n N npdiff train …`` (or ``srun``) starts N copies of the same run. Each one is
a *rank*; they hold identical models and split every batch between them:

    global batch   N·B items, in the seeded order one process with batch N·B would use;
                   rank r keeps items [r·B, (r+1)·B)                   (``DataLoader(num_replicas, rank)``)
    random draws   every rank draws the global batch's t, ε, label drops (VAE: z's ε) from
                   the same generator and keeps its slice              (``ShardedGenerator``);
                   dropout masks (npdiff's global generator) come from a per-rank, per-step
                   stream                                              (``seed_step``)
    gradients      ḡ = (1/N) Σ_r g_r, with g_r the mean over rank r's B items, so ḡ is the
                   mean over the N·B items: one in-place Allreduce of one flat buffer per step
                   (``Distributed.average_gradients``), which also carries the loss terms and
                   the Ctrl-C flag, so every rank logs, stops and clips on the same numbers
    parameters     broadcast from rank 0 at start and at resume (``broadcast_arrays``); after
                   that every rank applies the same AdamW step to the same numbers, so weights
                   and EMA stay bit-identical (checked at every checkpoint: ``check_replicas``)
    writing        rank 0 alone writes the config, checkpoints, log, sample grids, progress bar

So N ranks × batch B follow one process with batch N·B up to float rounding (the sums
over the batch are grouped differently); ``tests/training/test_distributed.py`` checks
it. Without a launcher (plain ``npdiff train``) there is one rank and MPI is never
imported. The cost model of the all-reduce is in ``docs/distributed.md``.

Failures. A collective never waits forever: each one is started non-blocking and polled
against a deadline (``NPDIFF_DIST_TIMEOUT`` seconds, default 600 — long enough for a
cold Numba compile or a checkpoint on rank 0). A rank that raises tells the others at
once (a small message they check while polling), so they stop with "rank r failed: …";
a rank that dies silently (killed, out of memory) is found when the deadline passes: the
waiting ranks ping every rank and name the ones that do not answer. The job then ends
through ``MPI_Abort`` (``Distributed.abort``); a plain exit would hang in MPI_Finalize
behind the unfinished collective.

Threads: each rank runs its own Numba pool. ``kernels/config.py`` sets
``NUMBA_NUM_THREADS`` to cores ÷ ranks on this node (at least 1) before Numba starts,
reading the launcher's local-size variable; an explicit ``NUMBA_NUM_THREADS`` wins.
"""

from __future__ import annotations

import os
import sys
import time
import zlib

import numpy as np

DEFAULT_TIMEOUT = 600.0  # seconds a rank waits in one collective
_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE", "SLURM_STEP_NUM_TASKS")
_TAG_FAILED, _TAG_PING, _TAG_PONG = 7701, 7702, 7703


ROOT_ABORT_DELAY = 1.0  # s: rank 0's pause before MPI_Abort, for the launcher to forward its last output (abort)


class DistributedError(RuntimeError):
    """Another rank failed, died or stopped answering; ``rank`` names it (None: several)."""

    def __init__(self, message: str, rank: int | None = None):
        super().__init__(message)
        self.rank = rank


def launcher_world_size() -> int:
    """The number of processes a launcher (mpiexec, mpirun, srun) started, from its environment; 1 if none."""
    for name in _SIZE_VARIABLES:
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 1:
            return int(value)
    return 1


def dist_timeout() -> float:
    text = os.environ.get("NPDIFF_DIST_TIMEOUT", "")
    if not text:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"NPDIFF_DIST_TIMEOUT must be a number of seconds, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"NPDIFF_DIST_TIMEOUT must be positive, got {text!r}")
    return value


def _import_mpi():
    try:
        from mpi4py import MPI
    except (ImportError, RuntimeError) as e:  # without an MPI library mpi4py raises RuntimeError
        raise RuntimeError(
            f"this process was started by an MPI launcher with {launcher_world_size()} processes, but mpi4py "
            f"cannot be used ({type(e).__name__}: {e}). Install it with `pip install 'npdiff[dist]'` "
            f"(mpi4py and the MPICH library), or run without mpiexec for one process.") from e
    return MPI


class ShardedGenerator:
    """A numpy Generator seen by one rank: each draw is made for the global batch and sliced.

    ``integers(lo, hi, size=B)``, ``random(B)`` and ``standard_normal((B, …))`` draw N·B
    values along the first axis from the shared generator (the same numbers one process
    with batch N·B draws) and return items [rank·B, (rank+1)·B). The state is the wrapped
    generator's (``bit_generator``), identical on every rank, so checkpoints store it once.
    """

    def __init__(self, generator: np.random.Generator, rank: int, world_size: int):
        self.generator, self.rank, self.world_size = generator, int(rank), int(world_size)

    @property
    def bit_generator(self):
        return self.generator.bit_generator

    def _global(self, size):
        if size is None:
            raise ValueError("a ShardedGenerator draws per-sample arrays: pass size=(batch, ...)")
        shape = (int(size),) if np.ndim(size) == 0 else tuple(int(s) for s in size)
        return shape, (shape[0] * self.world_size, *shape[1:])

    def _slice(self, values, local: tuple):
        b = local[0]
        return values[self.rank * b:(self.rank + 1) * b]

    def integers(self, low, high=None, size=None, **kwargs):
        local, full = self._global(size)
        return self._slice(self.generator.integers(low, high, size=full, **kwargs), local)

    def random(self, size=None, **kwargs):
        local, full = self._global(size)
        return self._slice(self.generator.random(full, **kwargs), local)

    def standard_normal(self, size=None, **kwargs):
        local, full = self._global(size)
        return self._slice(self.generator.standard_normal(full, **kwargs), local)


class Distributed:
    """This process's place in a data-parallel job: ``rank``, ``world_size``, the collectives.

    ``Distributed.from_environment()`` joins MPI's world when a launcher started several
    processes and is a single rank otherwise (every method then returns at once). Timing:
    ``allreduce_seconds`` / ``allreduce_calls`` add up the time spent in the gradient
    all-reduce (waiting for the slowest rank included), for ``benchmarks/scaling.py``.
    """

    def __init__(self, comm=None, timeout: float | None = None):
        self.comm = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.world_size = 1 if comm is None else comm.Get_size()
        self.timeout = dist_timeout() if timeout is None else float(timeout)
        self.allreduce_seconds, self.allreduce_calls = 0.0, 0
        self._buffer = None

    @classmethod
    def from_environment(cls) -> "Distributed":
        """The shared instance of this process (MPI is initialised once, on first use)."""
        global _WORLD
        if _WORLD is None:
            comm = None
            expected = launcher_world_size()
            if expected > 1:
                MPI = _import_mpi()
                if MPI.COMM_WORLD.Get_size() != expected:  # else N unaware copies would write one run folder
                    raise RuntimeError(
                        f"the launcher started {expected} processes but MPI sees {MPI.COMM_WORLD.Get_size()}: "
                        f"mpi4py's MPI library ({' '.join(MPI.Get_library_version().split()[:3])}) does not "
                        f"match the launcher. Use that library's own mpiexec, or srun with the matching "
                        f"--mpi=pmi2/pmix plugin.")
                comm = MPI.COMM_WORLD
            _WORLD = cls(comm)
            if comm is not None:  # an uncaught exception on one rank must not leave the others waiting
                _WORLD._previous_hook, sys.excepthook = sys.excepthook, _WORLD._excepthook
        return _WORLD

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def seed_step(self, seed: int, step: int) -> None:
        """Under MPI, npdiff's global generator (dropout masks) draws from ``default_rng([seed, 3,
        rank, step])`` during ``step``: independent on every rank, and a function of the step, so
        a resumed run draws the same masks without storing every rank's state. One rank: untouched
        (its state is checkpointed as before)."""
        if self.distributed:
            from .. import backend

            backend.manual_seed([int(seed), 3, self.rank, int(step)])

    def sharded(self, generator: np.random.Generator):
        """``generator`` itself for one rank, else a ``ShardedGenerator`` over it."""
        return generator if not self.distributed else ShardedGenerator(generator, self.rank, self.world_size)

    # -- waiting with a deadline ---------------------------------------------------------
    def _wait(self, request, what: str) -> None:
        """Poll a non-blocking request until done; a failure notice or the deadline raises.

        MPI progresses a non-blocking collective only inside MPI calls, so for the first
        5 ms (when the ranks arrive together the transfer is done by then: 0.3 ms for the
        digits UNet here) it polls Test() back to back as the blocking call would, yielding
        the core between polls; after that the ranks are out of step (one was slower or
        descheduled) and it sleeps 0.1 ms between polls, leaving the core to the others.
        Notices from other ranks are checked every 20 ms."""
        start = time.monotonic()
        next_check = start
        while not request.Test():
            now = time.monotonic()
            if now >= next_check:
                self._check_messages()
                next_check = now + 0.02
                if now - start > self.timeout:
                    self._timed_out(what)
            if now - start > 5e-3:
                time.sleep(1e-4)
            else:
                os.sched_yield()

    def _check_messages(self) -> None:
        from mpi4py import MPI

        status = MPI.Status()
        while self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=_TAG_PING, status=status):
            source = status.Get_source()
            self.comm.Recv(np.empty(1, np.int32), source=source, tag=_TAG_PING)
            self._send(np.array([self.rank], np.int32), source, _TAG_PONG)
        if self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=_TAG_FAILED, status=status):
            source = status.Get_source()
            text = np.empty(status.Get_count(MPI.BYTE), np.uint8)
            self.comm.Recv(text, source=source, tag=_TAG_FAILED)
            message = text.tobytes().decode("utf-8", "replace")
            raise DistributedError(f"rank {source} of {self.world_size} failed: {message}", rank=source)

    def _send(self, buffer: np.ndarray, dest: int, tag: int) -> None:
        """Non-blocking send of a small message; the buffer is kept alive until it completes."""
        self._sends = [(b, r) for b, r in getattr(self, "_sends", []) if not r.Test()]
        self._sends.append((buffer, self.comm.Isend(buffer, dest=dest, tag=tag)))

    def _timed_out(self, what: str) -> None:
        """Ask every other rank whether it is alive (they answer while polling) and raise naming the silent ones."""
        from mpi4py import MPI

        others = [r for r in range(self.world_size) if r != self.rank]
        for r in others:
            self._send(np.array([self.rank], np.int32), r, _TAG_PING)
        answered, status, reply = set(), MPI.Status(), np.empty(1, np.int32)
        deadline = time.monotonic() + min(10.0, max(1.0, self.timeout / 4))  # pollers answer within 20 ms
        while time.monotonic() < deadline and len(answered) < len(others):
            if self.comm.Iprobe(source=MPI.ANY_SOURCE, tag=_TAG_PONG, status=status):
                self.comm.Recv(reply, source=status.Get_source(), tag=_TAG_PONG)
                answered.add(int(reply[0]))
            else:
                self._check_messages()
                time.sleep(1e-3)
        silent = [r for r in others if r not in answered]
        names = ", ".join(map(str, silent)) or "none (all answered; a rank may be stuck outside a collective)"
        raise DistributedError(
            f"rank {self.rank} waited {self.timeout:g} s in {what}; rank(s) {names} of {self.world_size} did not "
            f"arrive and do not answer (dead or hung). NPDIFF_DIST_TIMEOUT sets the wait.",
            rank=silent[0] if len(silent) == 1 else None)

    # -- collectives -----------------------------------------------------------------------
    def broadcast_arrays(self, arrays, what: str = "the parameter broadcast") -> None:
        """Overwrite ``arrays`` (a list of numpy arrays) in place with rank 0's, in one flat Ibcast."""
        if not self.distributed or not arrays:
            return
        dtype = np.result_type(*arrays)
        flat = np.concatenate([np.asarray(a, dtype=dtype).ravel() for a in arrays]) if self.is_root else \
            np.empty(sum(a.size for a in arrays), dtype=dtype)
        self._wait(self.comm.Ibcast(flat, root=0), what)
        offset = 0
        for a in arrays:
            a[...] = flat[offset:offset + a.size].reshape(a.shape)
            offset += a.size

    def broadcast_flag(self, value: bool, what: str) -> bool:
        """Rank 0's boolean, on every rank."""
        if not self.distributed:
            return bool(value)
        flag = np.array([1 if value else 0], dtype=np.int32)
        self._wait(self.comm.Ibcast(flag, root=0), what)
        return bool(flag[0])

    def average_gradients(self, params, scalars: dict, stop: bool = False) -> tuple[dict, bool]:
        """ḡ = (1/N) Σ_r g_r for every parameter, in place; returns (scalars averaged, stop on any rank).

        One flat buffer, one in-place Iallreduce (sum), laid out as
        [all gradients | ranks holding each gradient | scalars | stop flags]. A parameter
        without a gradient contributes zeros and gets the average of the others' (or
        stays without one when no rank has it). A NaN/Inf scalar stays NaN/Inf on every
        rank, so all of them stop together."""
        if not self.distributed:
            return dict(scalars), bool(stop)
        from mpi4py import MPI

        params = list(params)
        sizes = [int(p.data.size) for p in params]
        n_grad, n_par, n_sc = sum(sizes), len(params), len(scalars)
        dtype = np.result_type(*[p.data.dtype for p in params]) if params else np.float32
        if self._buffer is None or self._buffer.size != n_grad + n_par + n_sc + 1 or self._buffer.dtype != dtype:
            self._buffer = np.empty(n_grad + n_par + n_sc + 1, dtype=dtype)
        buf = self._buffer
        offset = 0
        for i, (p, size) in enumerate(zip(params, sizes)):
            if p.grad is None:
                buf[offset:offset + size] = 0
            else:
                buf[offset:offset + size] = np.asarray(p.grad.data).ravel()
            buf[n_grad + i] = p.grad is not None
            offset += size
        buf[n_grad + n_par:n_grad + n_par + n_sc] = list(scalars.values())
        buf[-1] = 1 if stop else 0
        t0 = time.perf_counter()
        self._wait(self.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM), "the gradient all-reduce")
        self.allreduce_seconds += time.perf_counter() - t0
        self.allreduce_calls += 1
        buf[:n_grad + n_par + n_sc] /= self.world_size
        from ..autograd import Tensor

        offset = 0
        for i, (p, size) in enumerate(zip(params, sizes)):
            mean = buf[offset:offset + size].reshape(p.data.shape)
            if p.grad is not None:
                p.grad.data[...] = mean
            elif buf[n_grad + i] > 0:
                p.grad = Tensor(mean.copy())
            offset += size
        averaged = {k: float(v) for k, v in zip(scalars, buf[n_grad + n_par:n_grad + n_par + n_sc])}
        return averaged, bool(buf[-1] > 0)

    def check_replicas(self, arrays, what: str) -> None:
        """Raise if ``arrays`` are not bit-identical on every rank (CRC-32 of their bytes, gathered)."""
        if not self.distributed:
            return
        crc = 0
        for a in arrays:
            crc = zlib.crc32(np.ascontiguousarray(a).view(np.uint8).ravel(), crc)
        mine = np.array([crc], dtype=np.int64)
        everyone = np.empty(self.world_size, dtype=np.int64)
        self._wait(self.comm.Iallgather(mine, everyone), f"the {what} check")
        differ = [r for r in range(self.world_size) if everyone[r] != everyone[0]]
        if differ:
            raise DistributedError(f"the {what} of rank(s) {differ} differ from rank 0's: the replicas have "
                                   f"diverged", rank=differ[0] if len(differ) == 1 else None)

    # -- ending ------------------------------------------------------------------------------
    def notify_failure(self, message: str) -> None:
        """Tell every other rank that this one failed (they raise DistributedError naming it)."""
        if not self.distributed:
            return
        text = message.strip().splitlines()[-1][:500] if message.strip() else "unknown error"
        data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()
        for r in range(self.world_size):
            if r != self.rank:
                self._send(data, r, _TAG_FAILED)

    def end_on_error(self, message: str, code: int) -> None:
        """Report this rank's failure, tell the other ranks, and end the job with ``code``."""
        print(f"npdiff: error (rank {self.rank} of {self.world_size}): {message}", file=sys.stderr, flush=True)
        self.notify_failure(message)
        self.abort(code, grace=60.0)

    def _excepthook(self, kind, value, traceback) -> None:
        """An uncaught exception in a script run under mpiexec: print it, tell the others, end the job."""
        self._previous_hook(kind, value, traceback)
        if not issubclass(kind, KeyboardInterrupt):
            self.notify_failure(f"{kind.__name__}: {value}")
        self.abort(1, grace=60.0)

    def abort(self, code: int, grace: float = 10.0) -> None:
        """End the whole job with ``code`` (MPI_Abort). A rank other than 0 first waits up to
        ``grace`` seconds, so that rank 0 (notified) can finish writing and end the job itself.
        Rank 0 waits a moment too: the launcher forwards each rank's output through its own
        pipes and tears the job down on MPI_Abort, dropping what it has not forwarded yet (seen
        on a loaded machine as rank 0's error message cut off mid-traceback)."""
        sys.stdout.flush()
        sys.stderr.flush()
        deadline = time.monotonic() + (grace if not self.is_root else min(grace, ROOT_ABORT_DELAY))
        while time.monotonic() < deadline:
            time.sleep(0.05)
        self.comm.Abort(int(code))


_WORLD: Distributed | None = None


def get_world() -> Distributed:
    """This process's ``Distributed`` (one rank when not started by an MPI launcher)."""
    return Distributed.from_environment()
