"""The hash chain: every way of breaking it is reported at the right record, and an
unbroken chain across files verifies."""

from __future__ import annotations

from prguard.shared.audit_chain import Head, Where, digest, head_of, link, verify
from prguard.shared.audit_record import GENESIS, Cause, Record, Start, decode

EMPTY = Head()


def record(n: int, kind: str = "refused") -> Record:
    if kind == "start":
        return Record(seq=1, prev=GENESIS, time=f"t{n}", kind="start",
                      start=Start(version="1", pid=n, continues="nothing found"))
    return Record(seq=1, prev=GENESIS, time=f"t{n}", kind="refused",
                  cause=Cause(refused_by="policy", reason=f"request {n}"))


def chain(count: int, head: Head = EMPTY) -> tuple[list[bytes], Head]:
    lines = []
    for n in range(count):
        line, head = link(record(n), head)
        lines.append(line)
    return lines, head


def located(lines: list[bytes], source: str = "audit.log") -> list[tuple[Where, bytes]]:
    return [(Where(source, n + 1), line) for n, line in enumerate(lines)]


def test_link_sets_seq_and_prev() -> None:
    lines, head = chain(3)
    records = [decode(line) for line in lines]
    assert [r.seq for r in records] == [1, 2, 3]
    assert records[0].prev == GENESIS
    assert records[1].prev == digest(lines[0][:-1])
    assert records[2].prev == digest(lines[1][:-1])
    assert head == Head(3, digest(lines[2][:-1]))
    assert head_of(lines[2]) == head


def test_an_unbroken_chain_verifies() -> None:
    lines, head = chain(5)
    report = verify(located(lines))
    assert report.ok and report.problem is None
    assert report.records == 5
    assert (report.first_seq, report.last_seq, report.last_hash) == (1, 5, head.hash)
    assert report.beginning == "begins at audit.log:1 (seq 1)"


def test_a_chain_across_rotated_files_verifies() -> None:
    old, head = chain(3)
    new, _ = chain(2, head)
    report = verify(located(old, "audit.log.1") + located(new, "audit.log"))
    assert report.ok and report.records == 5


def test_a_file_that_continues_an_earlier_one_verifies_on_its_own() -> None:
    _, head = chain(3)
    new, _ = chain(2, head)
    report = verify(located(new))
    assert report.ok
    assert "continues from records before audit.log:1" in report.beginning


def test_an_edited_record_is_named() -> None:
    lines, _ = chain(5)
    lines[2] = lines[2].replace(b"request 2", b"request 9")
    report = verify(located(lines))
    assert not report.ok and report.at == Where("audit.log", 3)
    assert report.problem == ("audit.log:3: record seq 3 was changed: it is not the record "
                              "audit.log:4 names as its predecessor")


def test_an_edited_prev_is_reported_where_the_chain_breaks() -> None:
    lines, _ = chain(4)
    lines[2] = lines[2].replace(decode(lines[2]).prev.encode(), b"0" * 64)
    report = verify(located(lines))
    assert not report.ok and report.at == Where("audit.log", 2)


def test_a_deleted_record_is_named() -> None:
    lines, _ = chain(5)
    del lines[2]
    report = verify(located(lines))
    assert report.problem == "audit.log:3: 1 record(s) removed before it (seq 3)"


def test_deleted_records_in_a_row_are_one_span() -> None:
    lines, _ = chain(6)
    del lines[1:4]
    assert verify(located(lines)).problem == (
        "audit.log:2: 3 record(s) removed before it (seq 2..4)")


def test_swapped_records_are_reported_as_reordered() -> None:
    lines, _ = chain(5)
    lines[1], lines[2] = lines[2], lines[1]
    report = verify(located(lines))
    assert report.problem == ("audit.log:2: records out of order: seq 2 is at audit.log:3, "
                              "after seq 3")


def test_a_record_moved_back_is_reported_as_reordered() -> None:
    lines, _ = chain(5)
    lines.append(lines.pop(1))  # seq 2 moved to the end
    assert "records out of order: seq 2 is at audit.log:5" in str(verify(located(lines)).problem)


def test_a_duplicated_record_is_reported() -> None:
    lines, _ = chain(4)
    lines.insert(2, lines[1])
    assert verify(located(lines)).problem == (
        "audit.log:3: records out of order: seq 2 comes after seq 2 (audit.log:2)")


def test_the_last_record_changed_keeps_the_links_but_changes_the_reported_hash() -> None:
    lines, head = chain(3)
    lines[2] = lines[2].replace(b"request 2", b"request 7")
    report = verify(located(lines))
    assert report.ok and report.last_hash != head.hash


def test_a_cut_last_line_is_reported() -> None:
    lines, _ = chain(3)
    lines[2] = lines[2][:30]
    report = verify(located(lines))
    assert report.problem is not None and report.problem.startswith(
        "audit.log:3: incomplete record")


def test_a_line_that_is_not_a_record() -> None:
    lines, _ = chain(3)
    lines[1] = b"hello\n"
    assert str(verify(located(lines)).problem).startswith("audit.log:2: not a record")


def test_a_first_record_with_genesis_must_be_seq_one() -> None:
    lines, _ = chain(1, Head(4, GENESIS))
    assert "a chain's first record has seq 5, not 1" in str(verify(located(lines)).problem)


def test_a_new_chain_in_the_middle_is_reported() -> None:
    old, _ = chain(2)
    restart, _ = link(record(9, "start"), Head())
    report = verify(located([*old, restart]))
    assert report.problem is not None
    assert report.problem.startswith("audit.log:3: a new chain starts here")


def test_nothing_to_verify() -> None:
    report = verify([])
    assert report.ok and report.records == 0 and report.last_hash is None
