"""Where notebooks run: a local process pool (the default) or a Dask distributed cluster.

An executor runs one `JobSpec` to its `JobOutcome` (blocking) and offers a
`concurrent.futures.Executor` that notebooks use to fan their evaluation cases out.
Addresses: `local`, `local:N` (N case workers), `dask://host:8786` or `tcp://host:8786`.
"""

from __future__ import annotations

import os
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Protocol

from contextlab.pipelines.execute import JobOutcome, JobSpec, execute


class ExecutorError(ValueError):
    """An executor address that cannot be used."""


class JobExecutor(Protocol):
    address: str

    def run(self, spec: JobSpec) -> JobOutcome: ...

    def case_executor(self) -> Executor: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Each job is a child process of this one; evaluation cases fan out over a local process pool."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or max(1, min(4, os.cpu_count() or 1))
        self.address = f"local:{self.workers}"
        self._cases: Executor | None = None

    def run(self, spec: JobSpec) -> JobOutcome:
        return execute(spec)

    def case_executor(self) -> Executor:
        if self._cases is None:
            self._cases = ProcessPoolExecutor(self.workers) if self.workers > 1 else ThreadPoolExecutor(1)
        return self._cases

    def close(self) -> None:
        if self._cases is not None:
            self._cases.shutdown(cancel_futures=True)
            self._cases = None


class DaskExecutor:
    """Jobs and evaluation cases run on a Dask distributed cluster (workers must see the run folder)."""

    def __init__(self, address: str, *, client: Any = None, connect_timeout_s: float = 10.0) -> None:
        from distributed import Client

        self.address = address
        scheduler = address.replace("dask://", "tcp://", 1)
        try:
            self.client = client or Client(scheduler, timeout=connect_timeout_s, set_as_default=False)
        except OSError as exc:
            raise ExecutorError(
                f"cannot reach the Dask scheduler at {scheduler}: {exc}. Start it with `dask scheduler` "
                "(and workers with `dask worker HOST:8786`), or use --executor local."
            ) from exc
        self._owns_client = client is None

    def run(self, spec: JobSpec) -> JobOutcome:
        # pure=False: the same spec run twice (a retry) must run twice.
        future = self.client.submit(execute, spec, pure=False, key=f"contextlab-job-{spec.run_id}")
        return future.result()

    def case_executor(self) -> Executor:
        return self.client.get_executor(pure=False)

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


def make_executor(address: str | None) -> JobExecutor:
    """`local`, `local:N`, `dask://host:port` or `tcp://host:port`."""
    text = (address or "local").strip()
    if text == "local":
        return LocalExecutor()
    if text.startswith("local:"):
        try:
            workers = int(text.split(":", 1)[1])
        except ValueError:
            workers = 0
        if workers < 1:
            raise ExecutorError(f"{text!r}: give local:N with N ≥ 1 case workers.")
        return LocalExecutor(workers)
    if text.startswith(("dask://", "tcp://")):
        return DaskExecutor(text)
    raise ExecutorError(f"unknown executor {text!r}: use local, local:N or dask://host:8786.")


def case_executor(address: str | None) -> Executor | None:
    """For notebooks: an Executor to fan cases out over, or None to run them in-process (`local:1`/`none`)."""
    text = (address or "").strip()
    if text in ("", "none", "local:1"):
        return None
    return make_executor(text).case_executor()
