"""Every file segc writes, and the output folder it writes them into.

Why a module of its own: a compiler that overwrites its input, loses a build to a second
run, or leaves a zero-byte ``build.sh`` after a full disk costs more than it saves. So:

* :func:`write_file` is the one atomic writer. It writes a temporary file beside the
  destination (``O_EXCL | O_NOFOLLOW``, so it never writes *through* a link), syncs it, and
  renames it over the destination. A rename replaces a symlink itself, never what it points
  to, and a destination that resolves to a protected file (the input model, its data) is
  refused outright. Files get the user's umask, like any other tool's output.
* :class:`StagedOutput` builds the whole OUTDIR in a sibling staging folder on the same
  file system and moves it into place only when the compile is done, so a compile either
  completes its OUTDIR or leaves it as it was::

      parent/                               parent/
        .segc-lock-out      (flock, pid)      out/            <- renamed into place (new), or
        .segc-stage-out-PID/  -- commit -->     build.sh         each file os.replace'd into
          m.ascend.onnx                         m.ascend.onnx    an existing OUTDIR, the
          build.sh  report.*                    report.*         manifest last
          .segc-manifest.json                   .segc-manifest.json

  An OUTDIR that already exists is staged (and locked) inside itself instead
  (``OUTDIR/.segc-stage-PID``), so compiling into a folder whose parent is not writable
  still works.

  ``.segc-manifest.json`` lists the files segc wrote (name and sha256). Without ``--force``
  segc only replaces files listed there and unchanged since; a user's ``report.md`` in the
  input's folder is never replaced silently. The OUTDIR is locked (``flock`` on
  ``parent/.segc-lock-NAME``, or ``OUTDIR/.segc-lock``) for the whole compile, so a second compile into it exits 2
  instead of silently losing one build. Staging folders left by a killed compile are
  removed by the next compile into the same OUTDIR (under the lock, no live compile can
  own them).

Everything the user can get wrong about the folder (a parent that is a file, a read-only or
virtual file system, a name that is not UTF-8, a clash with the input) is found by
:meth:`StagedOutput.open`, before any pass runs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import queue
import re
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from segc.errors import SegcError

MANIFEST_NAME = ".segc-manifest.json"
STAGE_PREFIX = ".segc-stage-"
LOCK_PREFIX = ".segc-lock-"  # beside a new OUTDIR: parent/.segc-lock-NAME
LOCK_NAME = ".segc-lock"  # inside an existing one
_TMP_INFIX = ".segc-tmp-"
FIXED_NAMES = ("build.sh", "report.json", "report.md")  # what every compile writes besides its model


def shown(path: str | Path) -> str:
    """A path as it can be printed: bytes that are not UTF-8 are shown as ``\\xNN``."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def require_utf8(path: str | Path, what: str) -> None:
    """Refuse names that are not UTF-8: they cannot go into report.json or a build script intact."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise SegcError(f"{what} {shown(path)}: the name is not valid UTF-8; rename it") from None


def _cause(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def refuse_protected(path: Path, protect: Iterable[Path], what: str = "the input model") -> None:
    """SegcError when ``path`` is, or links to, one of ``protect`` (resolved through links)."""
    for other in protect:
        if _same_file(path, other):
            raise SegcError(f"{shown(path)}: refusing to write over {what} {shown(other)}")


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes; read back unless this process wrote the file itself
    (:func:`write_file` and :func:`remember_sha256` record what they wrote), since hashing
    costs about as long as writing did: 0.5 s for hrnet_w48_ocr's 268 MiB on this machine's
    CPUs (no SHA extensions), which a compile would otherwise pay twice for its output."""
    st = os.stat(path)
    known = _WRITTEN.get(_identity(st))
    if known is not None:
        return known
    return _hash_file(path)


def _hash_file(path: str | Path) -> str:
    """Read ``path`` and hash it: the one place segc reads a file back only to hash it."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


_HASH_BLOCK = 8 << 20  # hashlib drops the GIL for each update: large blocks let another thread run meanwhile
_THREAD_MIN = 1 << 20  # bytes: below this a chunk is hashed inline (a thread costs more than it saves)


class Sha256Writer:
    """sha256 of a stream of chunks, computed on a second thread once a chunk is large.

    hashlib releases the GIL while it hashes, so the digest of a model being written costs
    no wall time when a second core is free: the main thread serialises the next tensor and
    writes while this one hashes the last. Chunks are hashed in the order given.
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._queue: queue.Queue[bytes | memoryview | None] | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def update(self, chunk: bytes | memoryview) -> None:
        if self._queue is None and len(chunk) < _THREAD_MIN:
            self._digest.update(chunk)
            return
        if self._queue is None:
            self._queue = queue.Queue(maxsize=2)  # at most two chunks (tensors) wait to be hashed
            self._thread = threading.Thread(target=self._run, name="segc-sha256", daemon=True)
            self._thread.start()
        self._queue.put(chunk)

    def _run(self) -> None:
        assert self._queue is not None
        while (chunk := self._queue.get()) is not None:
            try:
                self._digest.update(chunk)
            except BaseException as exc:  # noqa: BLE001 - re-raised by hexdigest in the caller's thread
                self._error = exc

    def close(self) -> None:
        """Wait for the thread (also after an error: no thread outlives its writer)."""
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = None

    def hexdigest(self) -> str:
        self.close()
        if self._error is not None:
            raise self._error
        return self._digest.hexdigest()


class BackgroundSha256:
    """The sha256 of a file, read and hashed on a second thread from the moment it is made.

    ``segc compile`` starts one on the input before loading it, so the one hash of the input
    (report.json, build.sh, the batch cache key) overlaps the load, checks and planning
    instead of adding to them. :meth:`hexdigest` waits for it and re-raises its error.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._result: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="segc-input-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = file_sha256(self.path)
        except BaseException as exc:  # noqa: BLE001 - re-raised by hexdigest in the caller's thread
            self._error = exc

    def hexdigest(self) -> str:
        self._thread.join()
        if self._error is not None:
            if isinstance(self._error, OSError):
                raise SegcError(f"{shown(self.path)}: cannot read: {_cause(self._error)}") from None
            raise self._error
        assert self._result is not None
        return self._result


# sha256 of files this process wrote, by (device, inode, size, mtime): a rename keeps all four,
# and any later change to the file changes its size or mtime, so a stale entry never matches
_WRITTEN: dict[tuple[int, int, int, int], str] = {}


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def remember_sha256(path: str | Path, sha256: str) -> None:
    """Record the sha256 of a file this process has just finished writing (and closed)."""
    _WRITTEN[_identity(os.stat(path))] = sha256


@contextlib.contextmanager
def replacing(path: Path, *, protect: Sequence[Path] = ()) -> Iterator[Path]:
    """A fresh temporary name beside ``path`` for a writer that needs a file name (onnxruntime,
    onnx's external-data saver); renamed over ``path`` when the block succeeds, removed if not."""
    path = Path(path)
    refuse_protected(path, protect)
    tmp = path.parent / f".{path.name}{_TMP_INFIX}{os.getpid()}-{os.urandom(4).hex()}"
    try:
        yield tmp
        if not os.path.isfile(tmp) or os.path.islink(tmp):
            raise SegcError(f"{shown(path)}: the writer produced no file")
        os.replace(tmp, path)
    except OSError as exc:
        raise SegcError(f"{shown(path)}: cannot write: {_cause(exc)}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_file(path: str | Path, data: bytes, *, executable: bool = False, protect: Sequence[Path] = ()) -> Path:
    """Write ``data`` to ``path`` atomically (see the module docstring); SegcError on failure.

    A full disk or a read-only folder is the user's problem to fix, so it is reported as one
    line naming the path and the cause, and the old file (if any) is left as it was.
    """
    return write_chunks(path, (data,), executable=executable, protect=protect)


def write_chunks(path: str | Path, chunks: Iterable[bytes | memoryview], *, executable: bool = False,
                 protect: Sequence[Path] = ()) -> Path:
    """:func:`write_file` for data given in pieces (a model streamed tensor by tensor, so it is
    never held whole in memory). The sha256 of what was written is computed while writing
    and remembered (:func:`remember_sha256`), so neither the manifest nor report.json reads
    the file back to hash it."""
    path = Path(path)
    refuse_protected(path, protect)
    tmp = path.parent / f".{path.name}{_TMP_INFIX}{os.getpid()}-{os.urandom(4).hex()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    digest = Sha256Writer()
    try:
        fd = os.open(tmp, flags, 0o777 if executable else 0o666)  # the umask applies, as for any tool
        try:
            for chunk in chunks:
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
            digest.close()
        sha256 = digest.hexdigest()
        os.replace(tmp, path)  # replaces a symlink at ``path`` itself, never its target
        remember_sha256(path, sha256)
    except BaseException as exc:  # a full disk or Ctrl-C: no temp file stays behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise SegcError(f"{shown(path)}: cannot write: {_cause(exc)}") from None
        raise
    return path


def write_text(path: str | Path, text: str, *, executable: bool = False, protect: Sequence[Path] = ()) -> Path:
    """UTF-8; a non-UTF-8 file name quoted in a script keeps its own bytes (surrogateescape)."""
    return write_file(path, text.encode("utf-8", "surrogateescape"), executable=executable, protect=protect)


def check_dump_dir(directory: str | Path, names: Sequence[str], protect: Sequence[Path]) -> Path:
    """``--dump-dir``: a folder (made now), none of whose dump names is the input; before any pass."""
    directory = Path(directory)
    require_utf8(directory, "--dump-dir")
    if directory.exists() and not directory.is_dir():
        raise SegcError(f"--dump-dir {shown(directory)}: exists and is not a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SegcError(f"--dump-dir {shown(directory)}: cannot create the folder: {_cause(exc)}") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise SegcError(f"--dump-dir {shown(directory)}: the folder is not writable")
    for name in names:
        refuse_protected(directory / name, protect)
    remove_stale_temporaries(directory)
    return directory


@dataclass(frozen=True)
class ManifestEntry:
    """One file segc wrote into an OUTDIR, and its content hash when written."""

    name: str
    sha256: str


def read_manifest(outdir: Path) -> dict[str, ManifestEntry]:
    """The files a previous compile wrote into ``outdir``; empty when there is no readable manifest."""
    path = outdir / MANIFEST_NAME
    if path.is_symlink() or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        entries = [ManifestEntry(str(f["name"]), str(f["sha256"])) for f in data["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        return {}  # unreadable: treat every file as the user's
    return {e.name: e for e in entries if "/" not in e.name and e.name not in (".", "..")}


def _is_ours(path: Path, entry: ManifestEntry | None) -> bool:
    """A file segc wrote and nobody changed since (a plain file, same hash)."""
    if entry is None or path.is_symlink() or not path.is_file():
        return False
    try:
        return file_sha256(path) == entry.sha256
    except OSError:
        return False


# segc before this module staged each model in ``OUTDIR/.<model>.onnx.XXXXXXXX`` (mkdtemp),
# which a kill left behind, tens of MB each
_LEGACY_STAGING = re.compile(r"^\.(?P<model>.+\.onnx)\.[A-Za-z0-9_]{8}$")


def _is_legacy_staging(entry: Path) -> bool:
    """Such a folder, holding nothing but that model (and its .data)."""
    match = _LEGACY_STAGING.match(entry.name)
    if not match or entry.is_symlink() or not entry.is_dir():
        return False
    model = match["model"]
    try:
        return all(p.name in (model, model + ".data") and p.is_file() for p in entry.iterdir())
    except OSError:
        return False


def remove_stale_temporaries(folder: Path) -> None:
    """Temporary files :func:`write_file` left in ``folder`` when its process was killed."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        head, sep, tail = entry.name.partition(_TMP_INFIX)
        pid = tail.split("-", 1)[0]
        if (
            sep
            and head.startswith(".")
            and pid.isdigit()
            and not _alive(int(pid))
            and entry.is_file()
            and not entry.is_symlink()
        ):
            with contextlib.suppress(OSError):
                entry.unlink()


def _stamps(paths: Iterable[Path]) -> dict[Path, tuple[int, int, int, int]]:
    """Size, mtime, inode and device of each file: a change means someone wrote it."""
    found = {}
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        found[p] = (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)
    return found


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours from an earlier compile in this process: closed, so stale
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _pid_of_lock(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip() or "unknown"
    except OSError:
        return "unknown"


class StagedOutput:
    """An OUTDIR under construction; see the module docstring.

    Use as a context manager around everything after option checks::

        with StagedOutput(outdir, force=args.force, protect=[model], names=[...]) as out:
            save_model(model, out.path("m.ascend.onnx"))
            ...
            out.commit()

    Leaving the block without :meth:`commit` (an error, Ctrl-C) removes the staging folder
    and leaves OUTDIR as it was.
    """

    def __init__(
        self, outdir: str | Path, *, force: bool, protect: Sequence[Path] = (), names: Sequence[str] = ()
    ) -> None:
        self.outdir = Path(outdir)  # as the user gave it: for messages and the report
        self.force = force
        self.protect = [Path(p) for p in protect]
        self.names = list(names)
        self._real: Path | None = None
        self._stage: Path | None = None
        self._lock_fd: int | None = None
        self._lock_path: Path | None = None
        self._created: list[Path] = []
        self._inputs_seen = _stamps(self.protect)
        self.committed = False

    # -- set up -----------------------------------------------------------------------------

    def __enter__(self) -> "StagedOutput":
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        """Check the folder, lock it, clean stale staging, and make the staging folder."""
        require_utf8(self.outdir, "output folder")
        real = Path(os.path.abspath(self.outdir))
        if real.is_symlink() and real.is_dir():
            real = real.resolve()
        if os.path.lexists(real) and not real.is_dir():
            raise SegcError(f"{shown(self.outdir)}: exists and is not a folder (or is a broken link)")
        if real.name in ("", ".", ".."):
            raise SegcError(f"{shown(self.outdir)}: cannot be an output folder")
        self._real = real
        self._make_parents(real.parent)
        # an existing OUTDIR stages (and locks) inside itself, so its parent need not be
        # writable; a new one beside itself, in the parent it is about to be created in
        home, tag = (real, "") if real.is_dir() else (real.parent, f"{real.name}-")
        try:
            self._lock(home, f"{LOCK_PREFIX}{real.name}" if tag else LOCK_NAME)
            self._clean_stale(real)
            if real.is_dir():
                self.check_names(self.names)
            stage = home / f"{STAGE_PREFIX}{tag}{os.getpid()}"
            try:
                os.mkdir(stage, 0o777)  # the umask applies: a new OUTDIR gets the user's usual mode
            except OSError as exc:
                raise SegcError(f"{shown(self.outdir)}: cannot write into {shown(home)}: {_cause(exc)}") from None
            self._stage = stage
        except BaseException:
            self.close()
            raise

    def _make_parents(self, parent: Path) -> None:
        missing = []
        p = parent
        while not os.path.lexists(p):
            missing.append(p)
            p = p.parent
        if not p.is_dir():
            raise SegcError(f"{shown(self.outdir)}: cannot create the folder: {shown(p)} is not a folder")
        for folder in reversed(missing):
            try:
                os.mkdir(folder, 0o777)
            except OSError as exc:
                self._remove_created()
                raise SegcError(f"{shown(self.outdir)}: cannot create {shown(folder)}: {_cause(exc)}") from None
            self._created.append(folder)

    def _lock(self, home: Path, name: str) -> None:
        path = home / name
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        for _ in range(10):
            try:
                fd = os.open(path, flags, 0o666)
            except OSError as exc:
                raise SegcError(f"{shown(self.outdir)}: cannot write into {shown(home)}: {_cause(exc)}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise SegcError(f"another segc compile is writing {shown(self.outdir)} (pid {_pid_of_lock(path)}); "
                                    "wait for it or choose another -o") from None
                raise SegcError(f"{shown(self.outdir)}: cannot lock {shown(path)}: {_cause(exc)}") from None
            # the holder before us unlinks the file on release: make sure we locked the live one
            try:
                same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
            except OSError:
                same = False
            if not same:
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
            except OSError as exc:
                os.close(fd)
                raise SegcError(f"{shown(self.outdir)}: cannot write into {shown(home)}: {_cause(exc)}") from None
            self._lock_fd, self._lock_path = fd, path
            return
        raise SegcError(f"{shown(self.outdir)}: could not lock {shown(path)}")

    def _clean_stale(self, real: Path) -> None:
        """Staging of this OUTDIR (inside it, or beside it) left by a compile that was killed:
        its pid is dead, so nobody can still be writing it."""
        places = [(real.parent, f"{STAGE_PREFIX}{real.name}-")] + ([(real, STAGE_PREFIX)] if real.is_dir() else [])
        for folder, prefix in places:
            try:
                entries = list(folder.iterdir())
            except OSError:
                continue
            for entry in entries:
                pid = entry.name[len(prefix):]
                if (entry.name.startswith(prefix) and pid.isdigit() and not _alive(int(pid))
                        and entry.is_dir() and not entry.is_symlink()):
                    shutil.rmtree(entry, ignore_errors=True)
        if real.is_dir():
            for entry in real.iterdir():
                if _is_legacy_staging(entry):
                    shutil.rmtree(entry, ignore_errors=True)

    # -- while compiling --------------------------------------------------------------------

    @property
    def staging(self) -> Path:
        """The folder every artefact is written into until :meth:`commit`."""
        if self._stage is None:
            raise RuntimeError("StagedOutput used before open()")
        return self._stage

    def path(self, name: str) -> Path:
        return self.staging / name

    def final(self, staged: str | Path) -> Path:
        """Where a staged file will be once committed (as the user named the folder)."""
        return self.outdir / Path(staged).name

    def check_names(self, names: Iterable[str]) -> None:
        """Refuse to replace what is not segc's: the input, and without --force any file
        not in the old manifest or changed since segc wrote it."""
        real = self._real
        assert real is not None
        if not real.is_dir():
            return
        manifest = read_manifest(real)
        for name in names:
            dest = real / name
            if not os.path.lexists(dest):
                continue
            refuse_protected(dest, self.protect)
            if dest.is_dir() and not dest.is_symlink():
                raise SegcError(f"{shown(self.outdir / name)}: is a folder; segc would write a file there")
            if name == MANIFEST_NAME or self.force or _is_ours(dest, manifest.get(name)):
                continue
            raise SegcError(f"{shown(self.outdir / name)} exists and was not written by segc (or changed since); "
                            "use --force to replace it or choose another -o")

    # -- finish -----------------------------------------------------------------------------

    def commit(self) -> Path:
        """Move the staged files into OUTDIR; the manifest goes last."""
        real, stage = self._real, self.staging
        assert real is not None
        names = sorted(p.name for p in stage.iterdir() if p.name != MANIFEST_NAME and _TMP_INFIX not in p.name)
        self.check_names(names)
        changed = [p for p, before in self._inputs_seen.items() if _stamps([p]).get(p) != before]
        if changed:  # the build (and report.json's input hash) would describe another file
            raise SegcError(
                f"{shown(changed[0])} changed while segc was compiling it; nothing was written to {shown(self.outdir)}"
            )
        entries = {n: ManifestEntry(n, file_sha256(stage / n)) for n in names}
        try:
            if not real.exists():
                self._write_manifest(stage / MANIFEST_NAME, entries)
                os.rename(stage, real)
                self._stage = None
            else:
                old = read_manifest(real)
                for name, entry in old.items():  # older segc files still there and unchanged stay ours
                    if name not in entries and _is_ours(real / name, entry):
                        entries[name] = entry
                # written (the only step that needs disk space) before anything moves
                self._write_manifest(stage / MANIFEST_NAME, entries)
                for name in names:
                    os.replace(stage / name, real / name)  # a link at the destination is replaced, not followed
                os.replace(stage / MANIFEST_NAME, real / MANIFEST_NAME)
        except OSError as exc:
            raise SegcError(f"{shown(self.outdir)}: cannot move the build into place: {_cause(exc)}") from None
        self.committed = True
        return self.outdir

    def _write_manifest(self, path: Path, entries: dict[str, ManifestEntry]) -> None:
        from segc import __version__

        data = {
            "written_by": f"segc {__version__}",
            "files": [{"name": e.name, "sha256": e.sha256} for e in sorted(entries.values(), key=lambda e: e.name)],
        }
        write_text(path, json.dumps(data, indent=2) + "\n")

    def close(self) -> None:
        """Remove the staging folder and release the lock (after a commit or not)."""
        if self._stage is not None:
            shutil.rmtree(self._stage, ignore_errors=True)
            self._stage = None
        if self._lock_fd is not None:
            assert self._lock_path is not None  # set together with _lock_fd
            with contextlib.suppress(OSError):
                os.unlink(self._lock_path)
            os.close(self._lock_fd)
            self._lock_fd = None
        if not self.committed:
            self._remove_created()  # after the lock file is gone, so the folders are empty

    def _remove_created(self) -> None:
        for folder in reversed(self._created):
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only if still empty
        self._created = []


def private_folder(parent: Path) -> contextlib.AbstractContextManager[str]:
    """A fresh folder segc owns, for tools that write several files (removed afterwards)."""
    return tempfile.TemporaryDirectory(prefix=f".segc{_TMP_INFIX}", dir=parent)
