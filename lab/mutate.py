"""Put one-line bugs into a copy of the tree and check that the tests named for each fail.

    python -m lab.mutate [--fast | --slow] [--no-baseline] [--keep] [NAME ...]

The bugs are in lab/mutations.toml: a file, an exact snippet of it and its replacement,
and the tests that must catch it. For each one, the tree (without .git and .venv) is
copied, the snippet replaced (it must occur exactly once: a snippet that no longer
matches the code is an error, never a silent pass), and the named tests run in the copy
with the copy first on PYTHONPATH, so the test process and every prguard it starts
import the copy. A witness appended to the mutated module (or to the module that reads
a mutated data file) records each process that loads it: a run in which no process
loaded the mutant proves nothing and is an error too.

Verdicts: caught (every selected test failed), survived (some passed: the suite does not
prove what it should), broken (the run could not judge: no test selected, a collection
error, the mutant never loaded). The baseline runs the same tests on an unmutated copy
first; they must pass there.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MUTATIONS_FILE = REPO / "lab" / "mutations.toml"
WITNESS_VARIABLE = "PRGUARD_MUTANT_WITNESS"
NOT_COPIED = shutil.ignore_patterns(".git", ".venv", "__pycache__", ".mypy_cache",
                                    ".ruff_cache", ".pytest_cache", ".hypothesis",
                                    "*.egg-info", "build", "dist")
RUN_TIMEOUT = 900.0
KEYS = {"name", "bug", "file", "original", "replacement", "tests", "fast", "witness"}

#: Appended to the witness module in the copy: each process that imports it leaves a file
#: named after the module and its pid (before any confinement: imports happen at start).
WITNESS_CODE = '''

def _mutation_witness() -> None:  # added by lab/mutate.py to the copy under test
    import os
    where = os.environ.get("{variable}")
    if where:
        try:
            os.close(os.open(os.path.join(where, "{tag}." + str(os.getpid())),
                             os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        except OSError:
            pass


_mutation_witness()
'''


class MutationError(Exception):
    """lab/mutations.toml is malformed, or a snippet no longer matches the code."""


@dataclass(frozen=True)
class Mutation:
    name: str
    bug: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    fast: bool
    witness: str


def load(path: Path = MUTATIONS_FILE) -> list[Mutation]:
    entries = tomllib.loads(path.read_text()).get("mutation", [])
    mutations: list[Mutation] = []
    for entry in entries:
        where = entry.get("name", f"entry {len(mutations) + 1}")
        if set(entry) - KEYS or not KEYS - {"witness"} <= set(entry):
            raise MutationError(f"{path.name}: {where}: keys must be {sorted(KEYS)} "
                                "(witness optional)")
        if not entry["tests"] or not all(isinstance(t, str) for t in entry["tests"]):
            raise MutationError(f"{path.name}: {where}: no tests named")
        if entry["original"] == entry["replacement"]:
            raise MutationError(f"{path.name}: {where}: the replacement changes nothing")
        witness = entry.get("witness", entry["file"])
        if not witness.endswith(".py"):
            raise MutationError(f"{path.name}: {where}: {entry['file']} is not a module: "
                                "name the module that reads it as its witness")
        mutations.append(Mutation(entry["name"], entry["bug"], entry["file"],
                                  entry["original"], entry["replacement"],
                                  tuple(entry["tests"]), bool(entry["fast"]), witness))
    names = [m.name for m in mutations]
    if len(set(names)) != len(names):
        raise MutationError(f"{path.name}: names must be unique")
    return mutations


def mutated_text(mutation: Mutation, text: str) -> str:
    """`text` with the bug put in; MutationError unless the snippet occurs exactly once."""
    count = text.count(mutation.original)
    if count != 1:
        raise MutationError(
            f"{mutation.name}: the snippet to replace occurs {count} times in "
            f"{mutation.file} (it must occur exactly once); bring lab/mutations.toml up to "
            f"date with the code:\n{mutation.original}")
    return text.replace(mutation.original, mutation.replacement)


def check_applies(mutation: Mutation, tree: Path = REPO) -> None:
    mutated_text(mutation, (tree / mutation.file).read_text())
    if not (tree / mutation.witness).is_file():
        raise MutationError(f"{mutation.name}: no witness module {mutation.witness}")


def _tag(module: str) -> str:
    return module.removesuffix(".py").replace("/", ".")


def prepare(tree: Path, mutation: Mutation | None, witnesses: Sequence[str]) -> None:
    """Copy the repository to `tree`, put the bug in (if any), append the witnesses."""
    shutil.copytree(REPO, tree, symlinks=True, ignore=NOT_COPIED)
    if mutation is not None:
        target = tree / mutation.file
        target.write_text(mutated_text(mutation, target.read_text()))
    for module in witnesses:
        with open(tree / module, "a") as f:
            f.write(WITNESS_CODE.format(variable=WITNESS_VARIABLE, tag=_tag(module)))


@dataclass(frozen=True)
class Run:
    returncode: int
    cases: dict[str, str]  #: node id -> passed | failed | skipped
    loaded: frozenset[str]  #: witness modules some process imported
    log: Path

    def selected(self, selector: str) -> dict[str, str]:
        return {node: status for node, status in self.cases.items()
                if node == selector or node.startswith(selector + "[")
                or node.startswith(selector + "::") or node.split("::")[0] == selector}

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def run_tests(tree: Path, tests: Sequence[str], work: Path, label: str) -> Run:
    witness_dir = work / f"{label}.witness"
    witness_dir.mkdir()
    witness_dir.chmod(0o777)  # processes that dropped to -u nobody still leave their mark
    report, log = work / f"{label}.xml", work / f"{label}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    env[WITNESS_VARIABLE] = str(witness_dir)
    with open(log, "wb") as out:
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "-o", "junit_family=xunit1", f"--junitxml={report}", *tests],
            cwd=tree, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            timeout=RUN_TIMEOUT, check=False)
    cases: dict[str, str] = {}
    if report.exists():
        for case in ET.parse(report).iter("testcase"):
            node = f"{case.get('file')}::{case.get('name')}"
            kinds = {child.tag for child in case}
            cases[node] = ("failed" if kinds & {"failure", "error"} else
                           "skipped" if "skipped" in kinds else "passed")
    loaded = frozenset(name.rsplit(".", 1)[0] for name in os.listdir(witness_dir))
    return Run(result.returncode, cases, loaded, log)


@dataclass(frozen=True)
class Verdict:
    name: str
    verdict: str  #: caught | survived | broken | passed | failed
    detail: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.verdict in ("caught", "passed")

    def __str__(self) -> str:
        text = f"{self.verdict:8} {self.name} ({self.seconds:.0f} s)"
        return f"{text}\n{self.detail}" if self.detail else text


def _judge_run(run: Run, tests: Sequence[str], witnesses: Sequence[str]) -> str | None:
    """Why the run cannot be judged, or None."""
    missing = [m for m in witnesses if _tag(m) not in run.loaded]
    if missing:
        return f"never loaded from the copy: {', '.join(missing)}\n{run.tail()}"
    if run.returncode not in (0, 1):
        return f"pytest exited {run.returncode} (not a test outcome)\n{run.tail()}"
    unselected = [t for t in tests if not run.selected(t)]
    if unselected:
        return f"no test selected by: {', '.join(unselected)}\n{run.tail()}"
    skipped = [n for n, s in run.cases.items() if s == "skipped"]
    if skipped:
        return f"skipped (tests never skip): {', '.join(skipped)}"
    return None


def check(mutation: Mutation, work: Path) -> Verdict:
    """Put `mutation` in a copy and run its tests: caught only if every one fails."""
    started = time.monotonic()
    tree = work / mutation.name
    prepare(tree, mutation, [mutation.witness])
    run = run_tests(tree, mutation.tests, work, mutation.name)
    seconds = time.monotonic() - started
    problem = _judge_run(run, mutation.tests, [mutation.witness])
    if problem:
        return Verdict(mutation.name, "broken", problem, seconds)
    passed = sorted(n for t in mutation.tests for n, s in run.selected(t).items()
                    if s == "passed")
    if passed:
        return Verdict(mutation.name, "survived",
                       f"the bug ({mutation.bug}) passed: {', '.join(passed)}", seconds)
    return Verdict(mutation.name, "caught", "", seconds)


def baseline(mutations: Sequence[Mutation], work: Path) -> Verdict:
    """The tests of `mutations`, once, on an unmutated copy: all must pass."""
    started = time.monotonic()
    tree = work / "baseline"
    witnesses = sorted({m.witness for m in mutations})
    tests = list(dict.fromkeys(t for m in mutations for t in m.tests))
    prepare(tree, None, witnesses)
    run = run_tests(tree, tests, work, "baseline")
    seconds = time.monotonic() - started
    problem = _judge_run(run, tests, witnesses)
    if problem:
        return Verdict("baseline", "broken", problem, seconds)
    failed = sorted(n for n, s in run.cases.items() if s == "failed")
    if failed:
        return Verdict("baseline", "failed", f"failing without any bug: {', '.join(failed)}\n"
                       f"{run.tail()}", seconds)
    return Verdict("baseline", "passed", "", seconds)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.mutate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--fast", action="store_true", help="only those make test runs")
    which.add_argument("--slow", action="store_true", help="only those make test skips")
    parser.add_argument("--no-baseline", action="store_true",
                        help="do not run the tests on an unmutated copy first")
    parser.add_argument("--keep", action="store_true", help="keep the copies and logs")
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    args = parser.parse_args(argv)
    try:
        mutations = load()
        unknown = set(args.names) - {m.name for m in mutations}
        if unknown:
            parser.error(f"no such mutation: {', '.join(sorted(unknown))}")
        chosen = [m for m in mutations if (not args.names or m.name in args.names)
                  and (not args.fast or m.fast) and (not args.slow or not m.fast)]
        for mutation in chosen:
            check_applies(mutation)
    except MutationError as exc:
        print(f"lab.mutate: {exc}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="prguard-mutate-", dir="/tmp"))
    verdicts: list[Verdict] = []
    try:
        if not args.no_baseline:
            verdicts.append(baseline(chosen, work))
            print(verdicts[-1], flush=True)
        if all(v.ok for v in verdicts):
            for mutation in chosen:
                verdicts.append(check(mutation, work))
                print(verdicts[-1], flush=True)
    finally:
        if args.keep:
            print(f"copies and logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    bad = [v for v in verdicts if not v.ok]
    print(f"{len(verdicts) - len(bad)} of {len(verdicts)} as expected in "
          f"{sum(v.seconds for v in verdicts):.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
