"""Batches of runs (cases x controllers x seeds) on a concurrent.futures executor.

Each run is the pure function ``runner.run_one(case, controller, seed, out_dir)``.
By default a local process pool runs them (one SUMO per process: libsumo
holds one simulation per process, and both cores get used).  Engineers who
outgrow one machine pass Dask distributed's executor instead
(``--dask-scheduler ADDRESS``, or ``--dask-local N`` for a local cluster).
"""

from __future__ import annotations

import multiprocessing
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from controller.errors import SimulationError
from sim.kpis import RunKpis
from sim.runner import Case, run_one


def local_executor(workers: int) -> ProcessPoolExecutor:
    # spawn: a fresh interpreter per worker, so no libsumo state is inherited.
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def dask_executor(
    scheduler: str | None, local_workers: int = 2
) -> AbstractContextManager[Executor]:
    """A Dask distributed executor: connect to ``scheduler`` or start a local cluster."""
    from contextlib import ExitStack

    from distributed import Client, LocalCluster

    stack = ExitStack()
    if scheduler:
        client = stack.enter_context(Client(scheduler))  # type: ignore[no-untyped-call]
    else:
        cluster = stack.enter_context(
            LocalCluster(  # type: ignore[no-untyped-call]
                n_workers=local_workers, threads_per_worker=1, processes=True,
                dashboard_address=None,
            )
        )
        client = stack.enter_context(Client(cluster))  # type: ignore[no-untyped-call]

    class _Ctx(AbstractContextManager[Executor]):
        def __enter__(self) -> Executor:
            executor: Executor = client.get_executor(pure=False)
            return executor

        def __exit__(self, *exc: object) -> None:
            stack.close()

    return _Ctx()


def _job(case: Case, controller: str, seed: int, out_dir: Path) -> RunKpis:
    """``run_one`` with errors made transportable: libsumo's exceptions do not pickle, and a
    pickling error in the pool would hide SUMO's actual message."""
    try:
        return run_one(case, controller, seed, out_dir)
    except Exception as exc:
        if type(exc).__module__.split(".")[0] in ("libsumo", "traci"):
            # SUMO's own refusal (a route over an unknown edge, a broken additional file):
            # the engineer's input, not a bug, so a message rather than a traceback.
            raise SimulationError(
                f"{case.label} {controller} seed {seed}: SUMO stopped the run: "
                f"{' '.join(str(exc).split())}"
            ) from None
        try:
            pickle.dumps(exc)
        except Exception:
            raise RuntimeError(
                f"{case.label} {controller} seed {seed}: {type(exc).__name__}: {exc}"
            ) from None
        raise


def run_batch(
    cases: Sequence[Case],
    controllers: Sequence[str],
    seeds: Sequence[int],
    out_dir: Path,
    *,
    executor: Executor | None = None,
    workers: int = 2,
    log: Callable[[str], None] | None = None,
) -> list[RunKpis]:
    """Run every (case, controller, seed) and return the KPI records in a stable order."""
    say = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    jobs = [(c, ctrl, s) for c in cases for ctrl in controllers for s in seeds]
    owned: AbstractContextManager[Executor] = (
        nullcontext(executor) if executor is not None else local_executor(workers)
    )
    results: dict[int, RunKpis] = {}
    started = time.perf_counter()
    with owned as pool:
        futures: dict[Future[RunKpis], int] = {
            pool.submit(_job, case, ctrl, seed, out_dir): k
            for k, (case, ctrl, seed) in enumerate(jobs)
        }
        say(f"running {len(jobs)} simulations on {workers} worker(s) ...")
        for done, fut in enumerate(as_completed(futures), start=1):
            k = futures[fut]
            case, ctrl, seed = jobs[k]
            try:
                kpis = fut.result()
            except BaseException:
                # One failed run fails the batch: the runs not started yet are not started.
                for other in futures:
                    other.cancel()
                raise
            results[k] = kpis
            delay = "n/a" if kpis.vehicle_delay_s is None else f"{kpis.vehicle_delay_s:.1f} s"
            say(
                f"[{done}/{len(jobs)}] {case.label} {ctrl} seed {seed}: vehicle delay {delay}, "
                f"{kpis.wall_time_s:.0f} s wall ({time.perf_counter() - started:.0f} s elapsed)"
            )
    return [results[k] for k in range(len(jobs))]
