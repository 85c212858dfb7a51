"""Beam's portable route on this machine: a job service and an external SDK worker pool.

``make tokenize RUNNER=portable`` (and ``make tokenizers RUNNER=portable``) run::

    python -m musiclm.pipelines.portable musiclm.pipelines.tokenize_cli --dataset ... --out ...

which starts Beam's own services as two processes on this machine:

- the job service, ``python -m apache_beam.runners.portability.local_job_service_main``
  (listening on ``localhost``; its port comes back through ``--port_file``);
- an SDK worker pool, ``python -m apache_beam.runners.worker.worker_pool_main``, started
  with this interpreter's ``bin`` first on ``PATH`` (the pool starts each SDK worker as
  ``python -c ...``), in a process group of its own;

then calls the CLI's ``main`` with ``--runner PortableRunner --job_endpoint localhost:P
--environment_type EXTERNAL --environment_config localhost:W`` appended, and stops both
by process id (the pool with its workers, as a group) when the run ends, also when it
fails. The pipeline then speaks the Job API and the Fn API that Flink, Spark and
Dataflow runners speak; ``--job_endpoint`` of a Flink or Spark job server runs the same
pipeline there.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

START_TIMEOUT_S = 60.0
POOL_ADDRESS = re.compile(r"Started worker pool servicer at port: (\S+)")


class ServiceError(RuntimeError):
    """A Beam service did not start; the message holds the end of its log."""


def _wait_for(what: str, process: subprocess.Popen, log: Path, found) -> str:
    """Poll until ``found()`` gives a value; raise with the log's tail if the process dies."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        if process.poll() is not None:
            break
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise ServiceError(f"the Beam {what} did not start (log {log}):\n{tail}")


def _stop(process: subprocess.Popen, group: bool, grace: float = 10.0) -> None:
    """SIGTERM ``process`` (its whole process group if ``group``), SIGKILL after ``grace`` s.

    Returns once the process is reaped and, for a group, every member has exited.
    """

    def send(sig: int) -> None:
        with suppress(ProcessLookupError):
            if group:
                os.killpg(process.pid, sig)
            else:
                process.send_signal(sig)

    def gone() -> bool:
        if process.poll() is None:
            return False
        if not group:
            return True
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return True
        return False

    for sig in (signal.SIGTERM, signal.SIGKILL):
        send(sig)
        deadline = time.monotonic() + grace
        while not gone() and time.monotonic() < deadline:
            time.sleep(0.05)
        if gone():
            return


@contextmanager
def portable_services(work: str | Path | None = None) -> Iterator[list[str]]:
    """Start the job service and the worker pool; yield the Beam options that use them.

    ``work`` holds the services' logs, process ids (``*.pid``), port file and staged
    artifacts (default: a temporary directory, removed afterwards). Both processes are
    stopped on exit, whatever happened inside the block.
    """
    with ExitStack() as stack:
        if work is None:
            work = stack.enter_context(tempfile.TemporaryDirectory(prefix="musiclm-portable-"))
        work = Path(work)
        work.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])

        job_log, port_file = work / "job_service.log", work / "job_service.port"
        port_file.unlink(missing_ok=True)
        job = subprocess.Popen(
            [
                *(sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main"),
                *(
                    "--port",
                    "0",
                    "--port_file",
                    str(port_file),
                    "--staging_dir",
                    str(work / "stage"),
                ),
            ],
            stdout=stack.enter_context(job_log.open("wb")),
            stderr=subprocess.STDOUT,
            env=env,
        )
        stack.callback(_stop, job, False)
        (work / "job_service.pid").write_text(str(job.pid))
        job_port = _wait_for(
            "job service",
            job,
            job_log,
            lambda: port_file.exists() and port_file.read_text().strip(),
        )

        pool_log = work / "worker_pool.log"
        pool = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "apache_beam.runners.worker.worker_pool_main",
                "--service_port=0",
            ],
            stdout=stack.enter_context(pool_log.open("wb")),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its SDK workers share its process group
        )
        stack.callback(_stop, pool, True)
        (work / "worker_pool.pid").write_text(str(pool.pid))

        def pool_address() -> str:
            match = POOL_ADDRESS.search(pool_log.read_text(errors="replace"))
            return match.group(1) if match else ""

        address = _wait_for("worker pool", pool, pool_log, pool_address)
        yield [
            "--runner=PortableRunner",
            f"--job_endpoint=localhost:{job_port}",
            "--environment_type=EXTERNAL",
            f"--environment_config={address}",
        ]


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m musiclm.pipelines.portable MODULE [ARGS]``: MODULE's ``main`` on the route."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        sys.exit(
            "usage: python -m musiclm.pipelines.portable MODULE [ARGS...], e.g. "
            "musiclm.pipelines.tokenize_cli --dataset D --bundle B --out O"
        )
    cli = importlib.import_module(argv[0])
    try:
        with portable_services() as beam_args:
            cli.main([*argv[1:], *beam_args])
    except ServiceError as err:
        sys.exit(f"musiclm portable runner: {err}")


if __name__ == "__main__":
    main()
