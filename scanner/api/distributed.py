"""A fleet on a Ray cluster: each suspect a task with the resources it asks for, results streamed back.

The driver loads the reference once, builds its probe set and puts it in Ray's object store; every task loads
the reference in its own worker, takes the shared probe set instead of sampling again, and scans one suspect,
so its findings are those the sequential fleet (``scanner.api.fleet``) writes, timings apart, at the same torch
threads. A suspect that cannot be scanned comes back as its typed error; a worker that dies (killed, out of
memory) is retried once by Ray, then recorded as ``WorkerError``. The driver alone writes files: tasks return
findings. Ray is an optional extra (``pip install 'bdscan[ray]'``).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from scanner.api.fleet import FleetResult
from scanner.api.reference import prepare_reference
from scanner.errors import BdscanError, InputError, WorkerError
from scanner.findings import Findings, ProbeSetFindings
from scanner.options import ScanOptions
from scanner.progress import NO_PROGRESS, Progress

LOCAL = "local"
"""``--ray`` without an address: start a Ray instance on this machine for the run, and stop it after."""


@dataclass(frozen=True)
class RayPlacement:
    """Where a distributed fleet runs and what each suspect's task asks of it."""

    address: str = LOCAL
    """``local``, or the address of a running cluster (``ray start --head`` prints it: ``HOST:6379``, ``auto``)."""
    cpus_per_suspect: int | None = None
    """CPUs a task reserves; torch runs that many threads in it. None: as many as torch runs here (a sequential
    scan's threads), so that the findings are the sequential fleet's to the last digit; fewer run more suspects
    at once, with sums taken in another order."""
    gpus_per_suspect: float = 0.0
    """GPUs a task reserves (a fraction shares one); with any, the scan runs on the GPU Ray assigns."""


def _scan_one(suspect: Path, reference: str, options: ScanOptions, probe_set: ProbeSetFindings,
              threads: int) -> tuple[Findings | None, BdscanError | None]:
    """One suspect in a Ray worker: the reference loaded here, the driver's probe set reused."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from scanner.api.pipeline import scan_against

    torch.set_num_threads(threads)
    try:
        context = prepare_reference(reference, options, probe_set=probe_set)
        return scan_against(context, suspect, options), None
    except BdscanError as error:
        return None, error


def require_ray():
    """The ``ray`` module, or ``InputError`` naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise InputError("--ray needs Ray: pip install 'bdscan[ray]'") from None
    return ray


def scan_fleet_on_ray(
    suspects: Sequence[Path], reference: str, options: ScanOptions = ScanOptions(),
    placement: RayPlacement = RayPlacement(), progress: Progress = NO_PROGRESS,
    on_result: Callable[[int, FleetResult], None] | None = None,
) -> list[FleetResult | None]:
    """``scan_fleet`` with each suspect a Ray task; ``on_result(index, result)`` as each one ends, in the order
    they end. On Ctrl-C the tasks still queued or running are cancelled and the interrupt propagates; the
    results delivered so far stand. A problem with the reference or the options raises, as for one scan."""
    ray = require_ray()
    import torch

    if (placement.gpus_per_suspect > 0) != options.model.device.startswith("cuda"):
        raise InputError("on Ray a scan runs on CUDA exactly when its task reserves a GPU: give --gpus-per-suspect "
                         "with --device cuda, and neither without the other")
    # The cluster first: an address nothing answers at is refused before the reference is loaded.
    started_here = _connect(ray, placement)
    results: list[FleetResult | None] = [None] * len(suspects)
    pending: dict[object, int] = {}
    try:
        placement = _fit(ray, placement, torch.get_num_threads())
        probe_set = _probe_set(reference, options, progress)
        shared = ray.put(probe_set)
        remote = ray.remote(_scan_one).options(
            num_cpus=placement.cpus_per_suspect, num_gpus=placement.gpus_per_suspect, max_retries=1)
        pending = {remote.remote(Path(suspect), reference, options, shared, placement.cpus_per_suspect): index
                   for index, suspect in enumerate(suspects)}
        slots = _slots(ray, placement)
        task = progress.start(_status(len(suspects), pending, slots, results), len(suspects))
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready[0])
            results[index] = _collect(ray, ready[0], Path(suspects[index]))
            progress.advance(task)
            progress.describe(task, _status(len(suspects), pending, slots, results))
            if on_result is not None:
                on_result(index, results[index])
        progress.finish(task)
    except BaseException:
        # Ctrl-C, or anything else: nothing queued or running on a cluster this run joined may outlive it.
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started_here:
            ray.shutdown()
    return results


def _probe_set(reference: str, options: ScanOptions, progress: Progress) -> ProbeSetFindings:
    """The reference's probe set, built once by the driver: on the scan's device where this machine has it, else
    on the CPU (a head node without a GPU can still drive a GPU fleet); the model is let go before any task runs."""
    import gc

    import torch

    here = options
    if options.model.device.startswith("cuda") and not torch.cuda.is_available():
        here = replace(options, model=replace(options.model, device="cpu"))
    context = prepare_reference(reference, here, progress)
    probe_set = context.probe_set
    del context
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the tasks on this machine's GPU need the memory the driver's copy held
    return probe_set


def _fit(ray, placement: RayPlacement, threads_here: int) -> RayPlacement:
    """``placement`` as the cluster can run it, the CPUs a task asks for decided (``threads_here`` by default, as
    many as its largest node has at most): a task no node can hold would wait for ever, so ``InputError`` when
    the CPUs or GPUs given for one task exceed every node's."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    most_cpus = int(max((node.get("CPU", 0) for node in nodes), default=0))
    most_gpus = max((node.get("GPU", 0) for node in nodes), default=0)
    if placement.gpus_per_suspect > most_gpus:
        raise InputError(f"--gpus-per-suspect {placement.gpus_per_suspect:g}: no node of the Ray cluster has that many "
                         f"GPUs (the largest has {most_gpus:g})")
    if most_cpus < 1:
        raise InputError("the Ray cluster has no node with a CPU to run a scan on")
    if placement.cpus_per_suspect is not None and placement.cpus_per_suspect > most_cpus:
        raise InputError(f"--cpus-per-suspect {placement.cpus_per_suspect}: no node of the Ray cluster has that many "
                         f"CPUs (the largest has {most_cpus})")
    return replace(placement, cpus_per_suspect=placement.cpus_per_suspect or min(threads_here, most_cpus))


def _connect(ray, placement: RayPlacement) -> bool:
    """Join the cluster at ``placement.address``, or start one here; whether this run started it."""
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "include_dashboard": False, "configure_logging": True, "logging_level": logging.ERROR}
    environment = {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}
    if placement.address == LOCAL:
        # address="local": a new instance even where a cluster already runs or RAY_ADDRESS is set.
        ray.init(address="local", runtime_env=environment, object_store_memory=256 * 2**20, **quiet)
    else:
        _answers(placement.address)
        try:
            ray.init(address=placement.address, runtime_env=environment, **quiet)
        except ConnectionError as error:
            raise InputError(f"--ray {placement.address}: no Ray cluster answers there ({error})") from None
    return True


def _answers(address: str, seconds: float = 5.0) -> None:
    """``InputError`` at once when nothing listens at ``HOST:PORT``: Ray itself retries for minutes, logging each
    try, before it gives up. Other forms (``auto``, ``ray://...``) are left to Ray."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "/" in host:
        return
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as error:
        raise InputError(f"--ray {address}: no Ray cluster answers there ({error.strerror or error}); start one with "
                         "'ray start --head' on that machine, or give --ray alone for one on this machine") from None


def _collect(ray, ref, suspect: Path) -> FleetResult:
    """A finished task's result; a worker that died twice (Ray retried it once) is that suspect's failure."""
    try:
        findings, error = ray.get(ref)
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.OutOfMemoryError, ray.exceptions.NodeDiedError) as error:
        return FleetResult(suspect, None, WorkerError(f"suspect {suspect}: its Ray worker died twice "
                                                      f"({type(error).__name__}); scan it alone to see why"))
    return FleetResult(suspect, findings, error)


def _slots(ray, placement: RayPlacement) -> int:
    """Tasks the cluster can run at once, by the resources each asks for."""
    resources = ray.cluster_resources()
    slots = int(resources.get("CPU", 1) // max(placement.cpus_per_suspect, 1))
    if placement.gpus_per_suspect > 0:
        slots = min(slots, int(resources.get("GPU", 0) // placement.gpus_per_suspect))
    return max(slots, 1)


def _status(total: int, pending: dict, slots: int, results: Sequence[FleetResult | None]) -> str:
    done = [r for r in results if r is not None]
    failed = sum(r.error is not None for r in done)
    running = min(slots, len(pending))
    return (f"fleet on Ray: {len(done) - failed} done, {running} running, {failed} failed, "
            f"{len(pending) - running} queued of {total}")
