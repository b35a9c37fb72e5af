"""Helpers for the image tests: read the Dockerfile and .dockerignore the way ``docker build`` does.

No container daemon runs where the tests do, so tests/integration/deploy/test_image.py performs the Dockerfile's
builder stage itself: it assembles the build context from the stage's ``COPY`` lines filtered by
``.dockerignore`` (:func:`build_context`), then runs the stage's ``RUN`` lines that call
``deploy/image/install.sh`` (:func:`install_steps`). Both come from the Dockerfile, so a change there changes
what the test does.
"""

from __future__ import annotations

import fnmatch
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
INSTALL_SCRIPT = "deploy/image/install.sh"


@dataclass
class Stage:
    """One ``FROM`` stage: its base, name and instructions as (INSTRUCTION, arguments) pairs."""

    base: str
    name: str = ""
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, instruction: str) -> list[str]:
        """Arguments of every instruction of this kind, in order."""
        return [args for ins, args in self.instructions if ins == instruction]


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    """The stages of a Dockerfile (comments dropped, continuation lines joined)."""
    stages: list[Stage] = []
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        instruction, _, args = logical.partition(" ")
        logical = ""
        instruction = instruction.upper()
        args = args.strip()
        if instruction == "FROM":
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else ""
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append((instruction, args))
    return stages


def builder_stage() -> Stage:
    """The stage named ``builder``."""
    (stage,) = [s for s in parse_dockerfile() if s.name == "builder"]
    return stage


def _patterns() -> list[tuple[bool, str]]:
    out = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:] if negated else line
        out.append((negated, pattern.strip().strip("/")))
    return out


def _matches(pattern: str, path: PurePosixPath) -> bool:
    """Does ``pattern`` match ``path`` or one of its parents (as Docker's pattern matcher does)?"""
    candidates = [pattern, pattern[3:]] if pattern.startswith("**/") else [pattern]
    names = [str(path), *(str(parent) for parent in path.parents if str(parent) != ".")]
    return any(fnmatch.fnmatchcase(name, p) for name in names for p in candidates)


def ignored(relative: str) -> bool:
    """Does .dockerignore keep ``relative`` (a path in the repository) out of the build context?"""
    path = PurePosixPath(relative)
    result = False
    for negated, pattern in _patterns():
        if _matches(pattern, path):
            result = not negated
    return result


def build_context(destination: Path) -> list[str]:
    """Copy what the builder stage's ``COPY`` lines take from the context into ``destination`` (laid out as under
    the stage's WORKDIR); returns the copied files, relative."""
    copied: list[str] = []
    for args in builder_stage().all("COPY"):
        words = shlex.split(args)
        if any(w.startswith("--") for w in words):
            raise AssertionError(f"COPY {args}: flags are not supported by this test helper")
        *sources, target = words
        for source in sources:
            origin = ROOT / source
            files = sorted(p for p in origin.rglob("*") if p.is_file()) if origin.is_dir() else [origin]
            for file in files:
                rel = file.relative_to(ROOT).as_posix()
                if ignored(rel):
                    continue
                inner = file.relative_to(origin) if origin.is_dir() else PurePosixPath(file.name)
                if origin.is_dir():
                    out = destination / target / inner
                elif target.endswith("/") or target in {".", "./"}:
                    out = destination / target / file.name
                else:
                    out = destination / target
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(file, out)
                copied.append(rel)
    return copied


def install_steps() -> list[str]:
    """The builder stage's ``RUN`` lines that call the shared install script, as shell commands."""
    return [args for args in builder_stage().all("RUN") if INSTALL_SCRIPT in args]
