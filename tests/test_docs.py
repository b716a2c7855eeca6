"""The repository's documentation is inside the repository, and the code's pointers into it resolve."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from segc.errors import ExitStatus

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"
# spelled in pieces, so this file does not match itself
OUTSIDE_DOCS = ("DESIGN" + ".md", "REFERENCE" + ".md", "/work/" + "shared")


def repo_files() -> list[Path]:
    """Tracked files and new ones git does not ignore (what a commit would hold)."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode("utf-8", "surrogateescape")
    return [ROOT / name for name in listed.split("\0") if name and (ROOT / name).is_file()]


def test_no_file_points_at_documents_outside_the_repository() -> None:
    found = []
    for path in repo_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary files
        found += [f"{path.relative_to(ROOT)}:{n}: {name}" for n, line in enumerate(text.splitlines(), 1)
                  for name in OUTSIDE_DOCS if name in line]
    assert not found, "\n".join(found)


def test_section_references_name_real_sections() -> None:
    """``docs/design.md, "Section"`` in a docstring must name a heading of docs/design.md."""
    headings = {m.group(1).strip() for m in re.finditer(r"^#+ (.+)$", DESIGN.read_text(encoding="utf-8"), re.MULTILINE)}
    cited = {}
    for path in repo_files():
        if path.suffix in (".py", ".md") and path != Path(__file__).resolve():
            for m in re.finditer(r'docs/design\.md, "([^"]+)"', path.read_text(encoding="utf-8")):
                cited.setdefault(m.group(1), str(path.relative_to(ROOT)))
    assert cited, "no references found: the pattern is wrong"
    missing = {section: where for section, where in cited.items() if section not in headings}
    assert not missing, f"sections cited but not in docs/design.md: {missing}"


def test_design_documents_every_exit_status() -> None:
    text = DESIGN.read_text(encoding="utf-8")
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    for status in ExitStatus:
        assert f"| {int(status)} |" in section, status
