"""The suite proves what the docs claim: one-line bugs (lab/mutations.toml) put into a copy
of the tree are each caught by the tests named for them (lab/mutate.py).

Here: every mutation still applies to the code as it is, names tests that exist, and the
fast ones are caught; `make mutate` runs the slow ones as well. The checker itself can
fail: a harmless change survives, a stale snippet is an error, a mutant nobody loads
cannot pass for caught.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from lab import mutate
from lab.mutate import Mutation, MutationError

MUTATIONS = mutate.load()
FAST = [m for m in MUTATIONS if m.fast]


@pytest.fixture
def work() -> Iterator[Path]:
    """Where a copy of the tree and its test logs go (removed after: ~10 MB each)."""
    path = Path(tempfile.mkdtemp(prefix="pgm", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_every_mutation_applies_to_the_code_as_it_is() -> None:
    """A snippet the code no longer contains fails here: update lab/mutations.toml."""
    assert FAST and len(FAST) < len(MUTATIONS)
    for mutation in MUTATIONS:
        mutate.check_applies(mutation)


def test_every_named_test_exists() -> None:
    tests = sorted({t for m in MUTATIONS for t in m.tests})
    result = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                             "-p", "no:cacheprovider", *tests], cwd=mutate.REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_the_fast_tests_pass_without_any_bug(work: Path) -> None:
    verdict = mutate.baseline(FAST, work)
    assert verdict.verdict == "passed", str(verdict)


@pytest.mark.parametrize("mutation", FAST, ids=[m.name for m in FAST])
def test_the_suite_catches(mutation: Mutation, work: Path) -> None:
    verdict = mutate.check(mutation, work)
    assert verdict.verdict == "caught", str(verdict)


# -- the checker can fail ------------------------------------------------------------------

DRIVER = next(m for m in MUTATIONS if m.name == "driver-timeout-compared-whole")


def test_a_harmless_change_survives(work: Path) -> None:
    harmless = replace(DRIVER, name="harmless",
                       replacement=DRIVER.original.replace(":", ":  # a comment"))
    verdict = mutate.check(harmless, work)
    assert verdict.verdict == "survived", str(verdict)
    assert "test_driver_timeout_is_busy[38]" in verdict.detail


def test_a_mutant_nobody_loads_is_not_caught(work: Path) -> None:
    """The tests fail, but not because of the mutant: their process never imported it."""
    elsewhere = replace(DRIVER, name="elsewhere", witness="broker/limits.py",
                        tests=("tests/test_outcome.py::test_driver_timeout_is_busy[38]",))
    verdict = mutate.check(elsewhere, work)
    assert verdict.verdict == "broken", str(verdict)
    assert "never loaded from the copy: broker/limits.py" in verdict.detail


def test_a_stale_snippet_is_an_error() -> None:
    stale = replace(DRIVER, original=DRIVER.original.replace("driver_status", "driver_byte"))
    with pytest.raises(MutationError, match=r"occurs 0 times in worker/outcome\.py"):
        mutate.check_applies(stale)
    twice = replace(DRIVER, original="\n")
    with pytest.raises(MutationError, match="exactly once"):
        mutate.check_applies(twice)


def test_a_test_name_that_selects_nothing_is_an_error(work: Path) -> None:
    renamed = replace(DRIVER, name="renamed",
                      tests=("tests/test_outcome.py::test_driver_timeout_is_busy[38]",
                             "tests/test_outcome.py::test_no_such_test"))
    verdict = mutate.check(renamed, work)
    assert verdict.verdict == "broken", str(verdict)


def test_malformed_entries_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[mutation]]\nname = "x"\nbug = "y"\nfile = "a.py"\noriginal = "1"\n'
                   'replacement = "2"\ntests = []\nfast = true\n')
    with pytest.raises(MutationError, match="no tests named"):
        mutate.load(bad)
    bad.write_text('[[mutation]]\nname = "x"\nbug = "y"\nfile = "a.policy"\noriginal = "1"\n'
                   'replacement = "2"\ntests = ["t"]\nfast = true\n')
    with pytest.raises(MutationError, match="witness"):
        mutate.load(bad)
