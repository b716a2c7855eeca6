"""``segc batch``: every cell of a manifest, one ``segc compile`` subprocess each, cached.

Why subprocesses and not threads calling run_compile: a cell that segfaults in a vendor
library, leaks memory or hangs must fail that cell only. Each cell is a :class:`Job` (the
``segc`` argv, a log file, a timeout) run by :func:`run_job`, which any executor can call:

    manifest --expand--> cells --cache lookup--> cached | jobs --executor--> outcomes
                                                           local: a pool of -j worker slots
                                                           ray:   one Ray task per job

Zoo models are exported first, once per export key (batch_cache.export_key), the same way
(``segc export`` in a subprocess); a failed export fails that model's cells only.

The batch folder:

    DIR/<model>/<target>[/<set>]/     each cell's OUTDIR (segc compile's usual artefacts)
    DIR/results.json|md|html          batch_results
    DIR/.segc-batch/cells/...json     cache entries (batch_cache)
    DIR/.segc-batch/logs/...log       each compile's stdout and stderr
    DIR/.segc-batch/models/KEY/M.onnx zoo exports
    DIR/.segc-batch/compiles.log      one JSON line per compile actually run (an audit trail)
    DIR/.segc-batch/lock              one batch at a time per folder
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shlex
import subprocess
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any, Callable, Sequence

import segc
from segc.batch_cache import STATE_DIR, cell_key, export_key, lookup, store
from segc.batch_manifest import Cell, Manifest, ModelEntry, expand, load_manifest
from segc.batch_results import NOT_RUN, CellResult, VerdictSummary, write_results
from segc.errors import SegcError
from segc.outdir import file_sha256


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", metavar="MANIFEST.toml")
    parser.add_argument(
        "-j", "--jobs", type=int, default=None, help="cells compiled at once (default: the number of cores)"
    )
    parser.add_argument("-o", "--output", dest="outdir", default=None,
                        help="output folder (default: <manifest stem>.batch/ beside the manifest)")
    parser.add_argument("--executor", choices=["local", "ray"], default="local",
                        help="local: a pool of subprocesses on this machine; ray: the same cells as Ray tasks")
    parser.add_argument(
        "--address", default=None, help="Ray cluster address, e.g. ray://head:10001 (default: a local Ray)"
    )
    parser.add_argument("--no-cache", action="store_true", help="compile every cell, cached or not")
    parser.add_argument("--list", action="store_true", help="print each cell's segc compile command; compile nothing")


@dataclass(frozen=True)
class Job:
    """One ``segc`` subprocess: what an executor runs (picklable, for Ray)."""

    label: str
    argv: tuple[str, ...]  # after ``segc``
    log: str  # absolute path of the stdout+stderr log
    timeout: float | None


@dataclass(frozen=True)
class JobOutcome:
    exit_code: int | None  # None: killed at the timeout; negative: killed by that signal
    seconds: float
    timed_out: bool
    last_error: str | None  # the ``segc: error:`` line, else the log's last line


_LIVE: set[subprocess.Popen[bytes]] = set()  # the compiles running now, killed if the batch is stopped
_LIVE_LOCK = threading.Lock()


def kill_live_jobs() -> None:
    with _LIVE_LOCK:
        for proc in _LIVE:
            with contextlib.suppress(OSError):
                proc.kill()


def run_job(job: Job) -> JobOutcome:
    """Run ``segc <argv>`` in its own process; its crash or hang is only this job's outcome."""
    log = Path(job.log)
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timed_out = False
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "segc", *job.argv], stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        with _LIVE_LOCK:
            _LIVE.add(proc)
        try:
            code: int | None = proc.wait(timeout=job.timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code, timed_out = None, True
        except BaseException:  # Ctrl-C in the batch: no compile outlives it
            proc.kill()
            proc.wait()
            raise
        finally:
            with _LIVE_LOCK:
                _LIVE.discard(proc)
    return JobOutcome(code, round(time.perf_counter() - started, 3), timed_out, _last_error(log))


def _last_error(log: Path) -> str | None:
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    errors = [ln for ln in lines if ln.startswith("segc: error:")]
    return (errors or lines)[-1] if errors or lines else None


def outcome_name(o: JobOutcome) -> str:
    if o.timed_out:
        return "timeout"
    return {0: "passed", 1: "failed", 2: "error"}.get(o.exit_code if o.exit_code is not None else -1, "crashed")


# --- executors: run jobs, call on_done(job, outcome) as each finishes (in this thread) ---

Executor = Callable[[Sequence[Job], Callable[[Job, JobOutcome], None]], None]


def local_executor(jobs_at_once: int) -> Executor:
    def run(jobs: Sequence[Job], on_done: Callable[[Job, JobOutcome], None]) -> None:
        if not jobs:
            return
        with ThreadPoolExecutor(max_workers=jobs_at_once) as pool:  # threads only wait: the work is in subprocesses
            futures = {pool.submit(run_job, job): job for job in jobs}
            try:
                for fut in as_completed(futures):
                    on_done(futures[fut], fut.result())
            except BaseException:  # Ctrl-C or SIGTERM: stop queued cells, kill running ones
                for fut in futures:
                    fut.cancel()
                kill_live_jobs()
                raise
    return run


def ray_executor(jobs_at_once: int | None, address: str | None) -> Executor:
    """The same jobs as Ray tasks (one CPU each). Every node needs segc installed and the
    batch folder (and the models) at the same path: a shared file system."""
    import ray

    def run(jobs: Sequence[Job], on_done: Callable[[Job, JobOutcome], None]) -> None:
        if not jobs:
            return
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                # the tasks return a few numbers each: a small object store is plenty
                ray.init(num_cpus=jobs_at_once or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                         object_store_memory=200 * 1024 * 1024)
        task = ray.remote(num_cpus=1, max_retries=0)(run_job)
        queue, pending = list(jobs), dict[Any, Job]()
        limit = jobs_at_once or len(queue)
        while queue or pending:
            while queue and len(pending) < limit:
                job = queue.pop(0)
                pending[task.remote(job)] = job
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - the worker died: this job crashed, the batch goes on
                    outcome = JobOutcome(None, 0.0, False, f"ray task failed: {type(exc).__name__}: {exc}")
                on_done(job, outcome)
    return run


# --- the batch ---


def cell_argv(cell: Cell, model_path: Path | str, outdir: Path) -> list[str]:
    """The ``segc compile`` command line of ``cell`` (without the leading ``segc``)."""
    return [
        "compile",
        str(model_path),
        "--target",
        cell.target,
        "-o",
        str(outdir / cell.rel_outdir),
        *cell.compile_flags,
    ]


def _zoo_path(outdir: Path, m: ModelEntry) -> Path:
    assert m.zoo is not None
    return outdir / STATE_DIR / "models" / export_key(m.zoo.name, m.zoo.export_argv)[:16] / f"{m.name}.onnx"


def _model_path(outdir: Path, m: ModelEntry) -> Path:
    return m.path if m.path is not None else _zoo_path(outdir, m)


def _check_args(args: argparse.Namespace) -> None:
    if args.jobs is not None and args.jobs < 1:
        raise SegcError(f"-j {args.jobs}: give at least 1")
    if args.address and args.executor != "ray":
        raise SegcError("--address is a Ray cluster address: add --executor ray")
    if args.executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise SegcError("--executor ray needs Ray: pip install 'segc[fleet]' (or pip install ray)") from None


def _lock(outdir: Path) -> IO[str]:
    """The open lock file; closing it releases the lock."""
    state = outdir / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    fh = open(state / "lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise SegcError(f"{outdir}: another segc batch is writing this folder") from None
    return fh


def _stop_on_sigterm() -> Callable[[int, FrameType | None], Any] | int | None:
    """SIGTERM (a scheduler's stop, ``timeout``) stops the batch like Ctrl-C: the running
    compiles are killed, not orphaned holding their OUTDIR locks."""

    def stop(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, stop)


def run_batch(args: argparse.Namespace) -> int:
    manifest = load_manifest(args.manifest)
    cells = expand(manifest)
    _check_args(args)
    outdir = Path(args.outdir) if args.outdir else manifest.path.parent / f"{manifest.path.stem}.batch"
    if args.list:
        for cell in cells:
            m = next(m for m in manifest.models if m.name == cell.model)
            print(f"{cell.label}: segc {shlex.join(cell_argv(cell, _model_path(outdir, m), outdir))}")
        return 0
    if outdir.exists() and not outdir.is_dir():
        raise SegcError(f"-o {outdir}: is not a folder")
    outdir = outdir.resolve()
    jobs_at_once = args.jobs or os.cpu_count() or 1
    executor = ray_executor(args.jobs, args.address) if args.executor == "ray" else local_executor(jobs_at_once)
    lock = _lock(outdir)
    previous = _stop_on_sigterm()
    done: dict[str, CellResult] = {}
    interrupted = False
    try:
        _run(manifest, cells, outdir, executor, done, use_cache=not args.no_cache)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the results of what finished are still written
        interrupted = True
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        lock.close()
        if args.executor == "ray":
            import ray

            if ray.is_initialized():
                ray.shutdown()
    results = [done.get(c.label) or _not_run(c, outdir) for c in cells]
    paths = write_results(outdir, results, executor=args.executor, segc_version=segc.__version__)
    if interrupted:
        left = sum(r.outcome == NOT_RUN for r in results)
        print(
            f"segc: error: interrupted: {left} of {len(results)} cells not run (rerun to resume); {paths[1]}",
            file=sys.stderr,
        )
        return 130
    failed = [r for r in results if not r.ok]
    print(f"segc batch: {len(results)} cells, {len(results) - len(failed)} passed, {len(failed)} failed, "
          f"{sum(r.cached for r in results)} cached; {paths[1]}", file=sys.stderr)
    return 1 if failed else 0


def _not_run(cell: Cell, outdir: Path) -> CellResult:
    log = outdir / STATE_DIR / "logs" / cell.rel_outdir.with_name(cell.rel_outdir.name + ".log")
    return _result(
        cell,
        NOT_RUN,
        None,
        0.0,
        VerdictSummary(None, 0, None, "the batch was stopped before this cell finished", 0),
        None,
        log,
        outdir,
        "",
        None,
    )


def _run(manifest: Manifest, cells: list[Cell], outdir: Path, executor: Executor, results: dict[str, CellResult], *,
         use_cache: bool) -> None:
    """Fill ``results`` (cell label -> result) as cells finish, so an interrupted batch keeps them."""
    from segc.batch_progress import Progress

    state = outdir / STATE_DIR
    models = {m.name: m for m in manifest.models}
    progress = Progress(len(cells))
    with progress:
        # 1. zoo exports, once per export key
        export_failure: dict[str, str] = {}
        exports = []
        for m in manifest.models:
            if m.zoo is not None and not (use_cache and _zoo_path(outdir, m).is_file()):
                exports.append(
                    Job(
                        m.name,
                        ("export", m.zoo.name, "-o", str(_zoo_path(outdir, m)), "--force", *m.zoo.export_argv),
                        str(state / "logs" / m.name / "export.log"),
                        m.timeout or manifest.timeout,
                    )
                )

        def exported(job: Job, o: JobOutcome) -> None:
            if o.exit_code != 0:
                export_failure[job.label] = f"export failed ({outcome_name(o)}): {o.last_error}"
            progress.note(
                f"exported {job.label}" if o.exit_code == 0 else f"export of {job.label} failed: {o.last_error}"
            )

        executor(exports, exported)

        # 2. cells: cached, failed with their model's export, or compiled
        jobs: list[Job] = []
        keyed: dict[str, tuple[Cell, str, str]] = {}
        for cell in cells:
            m = models[cell.model]
            log = state / "logs" / cell.rel_outdir.with_name(cell.rel_outdir.name + ".log")
            if cell.model in export_failure:
                results[cell.label] = _result(
                    cell,
                    "error",
                    2,
                    0.0,
                    VerdictSummary(None, 0, None, export_failure[cell.model], 0),
                    None,
                    log,
                    outdir,
                    "",
                    None,
                )
                progress.done(results[cell.label])
                continue
            input_sha = file_sha256(_model_path(outdir, m))
            key = cell_key(input_sha, cell)
            hit = lookup(outdir, cell, key) if use_cache else None
            if hit is not None:
                results[cell.label] = hit
                progress.done(hit)
                continue
            keyed[cell.label] = (cell, key, input_sha)
            jobs.append(Job(cell.label, tuple(cell_argv(cell, _model_path(outdir, m), outdir)), str(log), cell.timeout))

        def compiled(job: Job, o: JobOutcome) -> None:
            cell, key, input_sha = keyed[job.label]
            report = _fresh_report(outdir / cell.rel_outdir, job.argv)
            # a passed compile's last log line is its summary, not a failure
            error_line = o.last_error if o.exit_code != 0 else None
            summary = VerdictSummary.from_report(report.with_name("report.json"), error_line) if report else \
                VerdictSummary(None, 0, None, o.last_error if o.exit_code != 0 else None, 0)
            r = _result(
                cell, outcome_name(o), o.exit_code, o.seconds, summary, report, Path(job.log), outdir, key, input_sha
            )
            store(outdir, cell, r)
            with open(state / "compiles.log", "a") as fh:  # appended after the compile, so it counts finished ones
                fh.write(
                    json.dumps({"cell": cell.label, "key": key, "exit_code": o.exit_code, "seconds": o.seconds}) + "\n"
                )
            results[cell.label] = r
            progress.done(r)

        executor(jobs, compiled)


def _fresh_report(cell_dir: Path, argv: tuple[str, ...]) -> Path | None:
    """report.md of this compile: one left by an older compile (another input, other flags) is not it."""
    try:
        report = json.loads((cell_dir / "report.json").read_text())
    except (OSError, ValueError):
        return None
    if report.get("command_line") != shlex.join(["segc", *argv]) or not (cell_dir / "report.md").is_file():
        return None
    return cell_dir / "report.md"


def _result(
    cell: Cell,
    outcome: str,
    exit_code: int | None,
    seconds: float,
    summary: VerdictSummary,
    report: Path | None,
    log: Path,
    outdir: Path,
    key: str,
    input_sha: str | None,
) -> CellResult:
    return CellResult(
        model=cell.model,
        target=cell.target,
        option_set=cell.option_set,
        options=list(cell.compile_flags),
        status=outcome,
        outcome=outcome,
        exit_code=exit_code,
        seconds=seconds,
        verdict=summary,
        report=str(report.relative_to(outdir)) if report else None,
        log=str(log.relative_to(outdir)),
        cached=False,
        key=key,
        input_sha256=input_sha,
    )
