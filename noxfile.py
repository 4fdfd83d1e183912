"""Developer sessions: `nox -s tests lint typecheck docs examples`."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "docs"]
nox.options.reuse_existing_virtualenvs = True

TORCH = "torch==2.13.0"  # install first: a bare `torch` requirement pulls several GB of CUDA packages


def _install(session: nox.Session, extras: str) -> None:
    session.install(TORCH)
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite on two CPU ranks (the README's test command)."""
    _install(session, "test")
    session.run("python", "-m", "pytest", *session.posargs, env={"HF_HUB_OFFLINE": "1"})


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "examples", "bench", "tools", "noxfile.py")


@nox.session
def typecheck(session: nox.Session) -> None:
    _install(session, "dev")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    _install(session, "docs,all")
    session.run("zensical", "build", "--strict", "--clean")


@nox.session
def examples(session: nox.Session) -> None:
    """Run every example on the tiny model on CPU (tests/examples/test_examples.py does the same in CI)."""
    _install(session, "test")
    session.run("python", "-m", "pytest", "tests/examples/test_examples.py", env={"HF_HUB_OFFLINE": "1"})
