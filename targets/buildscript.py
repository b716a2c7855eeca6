"""The one writer of every ``build.sh`` (and ``compare_tensorrt.sh``) segc emits.

Why one writer: a build script is where a vendor build goes wrong in ways nobody sees until a
night run on another machine. Every target therefore gets the same safety net from here:

* ``#!/usr/bin/env bash`` and ``set -euo pipefail``, so a failed step stops the build;
* a header naming segc's version, the input model's sha256 and the exact command line, so a
  ``.om``/``.mm``/``.engine`` found later can be traced to what produced it;
* ``cd`` to the script's own folder, so it runs from anywhere and the model files next to it
  are referred to by relative names (the folder can be moved or copied to the NPU host);
* every argument quoted with :func:`shlex.quote` (output folders named ``my "out" $HOME``
  must still work), and each command on one line, so ``shlex.split`` gives back the argv;
* a check for every tool before the first step, which names the missing tool and how to get
  it and exits 127 (bash's own "command not found" status), instead of failing halfway.

Targets describe *what* to run (:class:`Requirement`, :class:`Step`); this module decides
*how* it is written.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from segc.outdir import write_text
from segc.targets.base import Artefact, BuildOptions

MISSING_TOOL_STATUS = 127  # what bash itself returns for "command not found"

# ``cd "$(dirname "$0")"`` breaks on a folder named ``-x`` (dirname takes it for an option)
# and on one whose name ends in a newline ($(...) strips it). Plain parameter expansion has
# neither problem, ``--`` ends cd's options, and CDPATH must not redirect a relative cd.
CD_PREAMBLE = (
    "unset CDPATH",
    'case "${BASH_SOURCE[0]}" in */*) cd -- "${BASH_SOURCE[0]%/*}/" ;; esac',
)


@dataclass(frozen=True)
class Requirement:
    """A tool the script needs: an executable on PATH or an importable Python module."""

    name: str  # "atc", or the module name for kind "python-module"
    hint: str  # how to get it, e.g. "install CANN and source set_env.sh"
    kind: Literal["command", "python-module"] = "command"

    def check_line(self, script_name: str) -> str:
        """One bash line that exits 127 with a clear message when the tool is missing."""
        message = shlex.quote(f"{script_name}: {self._what()} not found ({self.hint})")
        if self.kind == "command":
            probe = f"command -v {shlex.quote(self.name)} >/dev/null"
        else:
            # python3 itself is checked first (see render_script), so this only tests the module
            probe = f"python3 -c {shlex.quote('import ' + self.name)} >/dev/null 2>&1"
        return f"{probe} || {{ echo {message} >&2; exit {MISSING_TOOL_STATUS}; }}"

    def _what(self) -> str:
        return self.name if self.kind == "command" else f"python module {self.name}"


PYTHON3 = Requirement("python3", "install Python 3")


@dataclass(frozen=True)
class Step:
    """One command of the build, as an argv (quoted on output), with a comment saying why."""

    argv: tuple[str, ...]
    comment: str = ""

    def line(self) -> str:
        return shlex.join(self.argv)


def _comment(text: str) -> str:
    """A bash comment that cannot break out of its line (command lines may hold newlines)."""
    flat = " ".join(text.replace("\r", " ").split("\n"))
    return f"# {flat}".rstrip()


def render_script(
    options: BuildOptions,
    requirements: Sequence[Requirement],
    steps: Sequence[Step],
    *,
    title: str,
    script_name: str = "build.sh",
    notes: Sequence[str] = (),
) -> str:
    """The text of a build script; see the module docstring for what it guarantees."""
    lines = [
        "#!/usr/bin/env bash",
        _comment(f"{title}, written by segc {options.segc_version or 'unknown'}"),
        _comment(f"input model sha256: {options.input_sha256 or 'unknown'}"),
        _comment(f"command line: {options.command_line or 'unknown'}"),
    ]
    lines += [_comment(n) for n in notes]
    lines += [
        "set -euo pipefail",
        "",
        "# run from this script's own folder, so the files beside it are found from anywhere",
        *CD_PREAMBLE,
        "",
    ]
    needs_python = any(r.kind == "python-module" for r in requirements)
    checks = ([PYTHON3] if needs_python and PYTHON3 not in requirements else []) + list(requirements)
    if checks:
        lines.append("# every tool is checked before the first step, so a build never fails halfway")
        lines += [r.check_line(script_name) for r in checks]
        lines.append("")
    for step in steps:
        if step.comment:
            lines.append(_comment(step.comment))
        lines.append(step.line())
    return "\n".join(lines) + "\n"


def write_script(
    path: Path,
    options: BuildOptions,
    requirements: Sequence[Requirement],
    steps: Sequence[Step],
    *,
    title: str,
    notes: Sequence[str] = (),
) -> Artefact:
    """Write an executable build script at ``path`` and return it as an Artefact."""
    text = render_script(options, requirements, steps, title=title, script_name=path.name, notes=notes)
    write_text(path, text, executable=True)  # atomic, never through a link; umask applies
    return Artefact(path=path, kind="script")


def write_build_script(
    outdir: Path,
    options: BuildOptions,
    requirements: Sequence[Requirement],
    steps: Sequence[Step],
    *,
    title: str,
    notes: Sequence[str] = (),
) -> Artefact:
    """``OUTDIR/build.sh``: the build every target emits."""
    return write_script(Path(outdir) / "build.sh", options, requirements, steps, title=title, notes=notes)


def relative_name(path: Path, outdir: Path) -> str:
    """How a script in ``outdir`` refers to ``path``: relative when inside the folder.

    build.sh changes to its own folder first, so files segc wrote beside it are named
    relatively (the folder stays movable); anything outside keeps its absolute path.
    """
    path = Path(path).resolve()
    try:
        name = str(path.relative_to(Path(outdir).resolve()))
    except ValueError:
        return str(path)
    # ``-m.onnx`` would be read as an option by the tool it is given to
    return f"./{name}" if name.startswith("-") else name


def parse_steps(script_text: str) -> list[list[str]]:
    """The argv of every command of a script segc wrote (for tests and ``inspect``).

    Skips comments, blank lines and the fixed preamble (set, cd, tool checks). A quoted
    argument may span lines (``python3 -c PROGRAM``): lines are joined until the quotes close.
    """
    argvs: list[list[str]] = []
    pending = ""
    for raw in script_text.splitlines():
        if not pending:
            line = raw.strip()
            if not line or line.startswith("#") or line.startswith("set -") or line in CD_PREAMBLE:
                continue
            if " || { echo " in line:
                continue
            pending = raw
        else:
            pending += "\n" + raw
        try:
            argvs.append(shlex.split(pending))
        except ValueError:  # "No closing quotation": the argument goes on on the next line
            continue
        pending = ""
    if pending:
        raise ValueError(f"unterminated command in script: {pending[:80]!r}")
    return argvs
