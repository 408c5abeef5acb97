"""Engines: who generates an experiment's work units.

An engine (`tempo_lens.analysis.experiments.runs.Engine`) takes work units
(`runs.work_units`: a batch of prompts × one setting) and hands back each unit's runs; the
runner (`runs.ensure_runs`) saves every run itself, through `save_run`, in the same on-disk layout
whichever engine made it — so a sweep started on one engine resumes on the other.

- `InProcessEngine` (the default): `generate_unit` on the model already loaded, unit by
  unit, in order. Needs nothing beyond tempo_lens.
- `RayEngine` (`pip install "tempo_lens[distributed]"`): each unit is a task served by a
  pool of Ray actors, each of which loads the model once (on a GPU when asked). Results
  come back as units finish. A worker that dies has its unit handed to another worker
  (and is restarted by Ray, reloading its model); the driver writes each run once, from
  the one result it accepts, so there is no duplicate and no loss.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tempo_lens.analysis.experiments.runs import (
    Engine,
    InProcessEngine,
    RunOptions,
    Unit,
    generate_unit,
)
from tempo_lens.errors import TempoError
from tempo_lens.quiet import load_model_quietly
from tempo_lens.run import TempoRun

EngineName = Literal["inprocess", "ray"]
ENGINES: tuple[EngineName, ...] = ("inprocess", "ray")
INSTALL_RAY = 'pip install "tempo_lens[distributed]"'


def import_ray() -> Any:
    """The `ray` module, or a `TempoError` naming the install command."""
    try:
        import ray
    except ImportError:
        raise TempoError(f"--engine ray needs Ray: {INSTALL_RAY}") from None
    return ray


def model_identity(model: Any) -> tuple[str, str]:
    """A model's name and the hash of its weights (`tempo_lens.provenance.weight_hash`):
    equal on the driver and every CPU worker, or the experiment would mix models."""
    from tempo_lens.provenance import weight_hash

    return model.cfg.model_name, weight_hash(model)


def check_reachable(address: str | None, timeout: float = 10.0) -> None:
    """A `HOST:PORT` address must accept a connection within `timeout` seconds (Ray itself
    retries an unreachable one for minutes); None and "auto" are Ray's to resolve."""
    if address is None or address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise TempoError(f"--address {address!r} is not HOST:PORT (or auto); e.g. 10.0.0.1:6379")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise TempoError(
            f"cannot reach a Ray cluster at {address} ({err.strerror or err}); start one with "
            "`ray start --head` there, or leave out --address for a local cluster"
        ) from None


class UnitWorker:
    """One Ray actor: loads the model once, then generates the units it is sent."""

    def __init__(self, model_name: str | None, device: str | None) -> None:
        import torch

        torch.set_grad_enabled(False)
        self.model = load_model_quietly(model_name, device=device)

    def describe(self) -> tuple[tuple[str, str], int]:
        """(the loaded model's name and weight hash, this worker's process id)."""
        return model_identity(self.model), os.getpid()

    def run(self, unit: Unit, options: RunOptions) -> list[TempoRun]:
        return generate_unit(self.model, unit, options)


@dataclass
class RayEngine:
    """Work units as Ray tasks on a pool of `workers` actors (`UnitWorker`).

    `address`: None starts a new local cluster for this process (unless Ray is already
    initialised, e.g. by the caller); `"auto"` or `"HOST:PORT"` joins a running cluster
    (`ray start --head`, docs/distributed.md). `workers`: None is as many as the cluster
    has CPUs (or GPUs / `gpus_per_worker` when GPUs are asked for). `gpus_per_worker`:
    each actor's `num_gpus`; the model is then loaded on `cuda`. `expect_model`: the
    driver's `model_identity`, checked against every worker's (a mismatch would mix two
    models in one experiment; GPU workers, whose weight processing ran on the GPU, are
    checked by name only). `max_restarts`: how often Ray restarts each dead actor."""

    model_name: str | None
    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0.0
    expect_model: tuple[str, str] | None = None
    max_restarts: int = 3
    resubmitted_units: int = 0
    _actors: list[Any] = field(default_factory=list, repr=False)
    _started_ray: bool = field(default=False, repr=False)
    _busy: dict[Any, tuple[Any, Unit]] = field(default_factory=dict, repr=False)
    _pids: dict[int, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        ray = import_ray()
        if self.workers is not None and self.workers < 1:
            raise TempoError(f"--workers must be at least 1, not {self.workers}")
        if self.gpus_per_worker < 0:
            raise TempoError(f"--gpus-per-worker must be 0 or more, not {self.gpus_per_worker}")
        check_reachable(self.address)
        if not ray.is_initialized():
            try:
                ray.init(
                    address=self.address or "local",  # None: a new cluster, never a stray one
                    include_dashboard=False,
                    log_to_driver=False,
                    configure_logging=False,
                )
            except ConnectionError as err:
                raise TempoError(
                    f"cannot reach a Ray cluster at {self.address!r} ({err}); start one with "
                    "`ray start --head` or leave out --address for a local cluster"
                ) from None
            self._started_ray = True
        n = self.workers or self._default_workers(ray)
        gpus = self.gpus_per_worker
        free = ray.available_resources()
        for what, need in (("CPU", n), ("GPU", n * gpus)):
            if need > free.get(what, 0) + 1e-9:  # the actors would wait forever
                self.close()
                raise TempoError(
                    f"{n} Ray workers need {need:g} {what}s but the cluster has "
                    f"{free.get(what, 0):g} free; lower --workers (or --gpus-per-worker) or "
                    "add nodes (docs/distributed.md)"
                )
        cls = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=self.max_restarts)(UnitWorker)
        device = "cuda" if gpus > 0 else "cpu"
        self._actors = [cls.remote(self.model_name, device) for _ in range(n)]
        from ray.exceptions import RayActorError

        try:
            described = ray.get([a.describe.remote() for a in self._actors])
        except RayActorError as err:
            self.close()
            lines = [line for line in str(err).splitlines() if line.strip()]
            raise TempoError(
                f"the Ray workers could not load {self.model_name or 'the embedded model'}: "
                f"{lines[-1] if lines else type(err).__name__}"
            ) from None
        self._pids = {id(a): pid for a, (_, pid) in zip(self._actors, described, strict=True)}
        checked = 1 if gpus > 0 else 2  # name only, or name and weight hash
        expected = self.expect_model
        for identity, _ in described:
            if expected is not None and identity[:checked] != expected[:checked]:
                self.close()
                raise TempoError(
                    f"the Ray workers loaded {' '.join(identity)} but the driver runs "
                    f"{' '.join(expected)}; the workers load the config's model: by name, "
                    "so give the driver that same model"
                )

    def _default_workers(self, ray: Any) -> int:
        res = ray.cluster_resources()
        if self.gpus_per_worker > 0:
            return max(1, int(res.get("GPU", 0) // self.gpus_per_worker))
        return max(1, int(res.get("CPU", 1)))

    def worker_pids(self, timeout: float = 300.0) -> list[int]:
        """Each worker's process id, asked anew (a restarted worker has a new one; waits
        for a busy worker's unit and for a restarting worker, up to `timeout` seconds)."""
        ray = import_ray()
        from ray.exceptions import ActorUnavailableError

        end = time.monotonic() + timeout
        for actor in self._actors:
            while True:
                try:
                    self._pids[id(actor)] = ray.get(actor.describe.remote())[1]
                    break
                except ActorUnavailableError:  # restarting: ask again shortly
                    if time.monotonic() > end:
                        raise
                    time.sleep(0.2)
        return [self._pids[id(a)] for a in self._actors]

    def busy_pids(self) -> list[int]:
        """Process ids of the workers running a unit now, the latest dispatched last, as
        last known (without asking the busy workers; for fault-injection tests)."""
        return [self._pids[id(actor)] for actor, unit in self._busy.values() if unit]

    def generate_units(
        self, units: Sequence[Unit], options: RunOptions
    ) -> Iterator[tuple[Unit, list[TempoRun]]]:
        """Keep every healthy worker busy with one unit; yield units as they finish.

        A worker that dies mid-unit (`RayActorError`) puts its unit back at the head of
        the queue, for the next healthy worker; the dead worker is restarted by Ray and
        probed (`describe`) until it answers, then takes units again (or is dropped after
        `max_restarts` deaths; a probe that finds it still restarting,
        `ActorUnavailableError`, asks again). Only the one result that comes back for a unit is
        yielded, so the runner writes each run once."""
        ray = import_ray()
        from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError

        queue = collections.deque(units)
        idle = collections.deque(self._actors)
        self._busy = {}  # ref -> (actor, its unit; None for a probe of a restarting actor)
        deaths: collections.Counter[int] = collections.Counter()

        def dispatch() -> None:
            while queue and idle:
                actor, unit = idle.popleft(), queue.popleft()
                self._busy[actor.run.remote(unit, options)] = (actor, unit)

        def died(actor: Any) -> None:
            deaths[id(actor)] += 1
            if deaths[id(actor)] <= self.max_restarts:  # Ray restarts it: wait for that
                self._busy[actor.describe.remote()] = (actor, None)

        dispatch()
        while self._busy:
            [ref], _ = ray.wait(list(self._busy), num_returns=1)
            actor, unit = self._busy.pop(ref)
            try:
                result = ray.get(ref)
            except RayTaskError as err:  # the unit itself failed: the error is the user's
                cause = getattr(err, "cause", None)
                if isinstance(cause, Exception):
                    raise cause from None
                raise
            except RayActorError as err:
                if unit is not None:
                    self.resubmitted_units += 1
                    queue.appendleft(unit)
                    died(actor)
                elif isinstance(err, ActorUnavailableError):  # still restarting
                    time.sleep(0.2)
                    self._busy[actor.describe.remote()] = (actor, None)
                else:
                    died(actor)
                dispatch()
                continue
            idle.append(actor)
            if unit is None:  # a restarted worker answered
                self._pids[id(actor)] = result[1]
                dispatch()
                continue
            dispatch()
            yield unit, result
        if queue:
            raise TempoError(
                f"every Ray worker died with {len(queue)} units left; check the workers' "
                "memory (one model per worker) and the cluster's logs, then re-run to resume"
            )

    def facts(self) -> dict[str, Any]:
        return {
            "engine": "ray",
            "workers": len(self._actors),
            "gpus_per_worker": self.gpus_per_worker,
            "resubmitted_units": self.resubmitted_units,
        }

    def close(self) -> None:
        ray = import_ray()
        for actor in self._actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self._actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False


def check_engine(
    name: str, address: str | None, workers: int | None, gpus_per_worker: float
) -> None:
    """An unknown engine, or options of the Ray engine given to the in-process one, are
    an error (never silently ignored); checked before any model loads."""
    if name not in ENGINES:
        raise TempoError(f"unknown engine {name!r}; use one of {', '.join(ENGINES)}")
    if name == "inprocess":
        given = [
            flag
            for flag, value in (
                ("--address", address),
                ("--workers", workers),
                ("--gpus-per-worker", gpus_per_worker or None),
            )
            if value is not None
        ]
        if given:
            raise TempoError(f"{', '.join(given)} only apply to --engine ray; add it")
    else:
        import_ray()


def make_engine(
    name: str,
    model: Any,
    model_name: str | None,
    *,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float = 0.0,
) -> Engine:
    """The engine called `name` (`ENGINES`) for `model` (loaded by the driver; the Ray
    workers load `model_name` themselves and must end up with the same model)."""
    check_engine(name, address, workers, gpus_per_worker)
    if name == "inprocess":
        return InProcessEngine(model)
    return RayEngine(
        model_name,
        address=address,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        expect_model=model_identity(model),
    )
