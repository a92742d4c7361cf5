"""A log's lines: marked as they are written, split back into lines as the API gives them."""

from __future__ import annotations

from tagrun.shared.loglines import (
    CODES,
    STDERR,
    STDOUT,
    TAGRUN,
    Chunk,
    LineMarker,
    Mark,
    anchored,
    flat,
    iso_ms,
    last_mark,
    moved,
    page,
    split_lines,
)
from tagrun.shared.redact import Redactor

OUT, ERR, OWN = CODES[STDOUT], CODES[STDERR], CODES[TAGRUN]


def test_a_mark_is_made_where_the_time_or_stream_of_the_lines_changes() -> None:
    marker = LineMarker()
    assert marker.marks("one\ntwo\nthr", OUT, 1) == [(0, 1, OUT)]  # three lines, one time
    assert marker.marks("ee\nfour\n", OUT, 1) == []  # "four" began when "one" did
    assert marker.marks("five\n", OUT, 2) == [(0, 2, OUT)]
    assert marker.marks("six", OUT, 3) == [(0, 3, OUT)]
    assert marker.marks(" and more\nseven\n", OUT, 4) == [(10, 4, OUT)]  # "six" keeps its mark
    assert marker.marks("\n", OUT, 5) == [(0, 5, OUT)]  # an empty line, begun at 5
    assert marker.marks("\n\n", OUT, 5) == []


def test_a_stream_that_changes_mid_line_begins_a_line_of_its_own() -> None:
    marker = LineMarker()
    assert marker.marks("progress", OUT, 1) == [(0, 1, OUT)]
    assert marker.marks("warning\n", ERR, 1) == [(0, 1, ERR)]
    assert marker.marks("50%", OUT, 1) == [(0, 1, OUT)]
    assert marker.marks("\nnext\n", ERR, 1) == [(1, 1, ERR)]  # the newline ends stdout's line


def test_a_continued_log_is_marked_after_the_newline_that_ends_the_earlier_line() -> None:
    marker = LineMarker(at_line_start=False)  # attempt 2: attempt 1 may have ended mid-line
    assert marker.marks("\n--- attempt 2 ---\n", OWN, 5) == [(1, 5, OWN)]
    assert LineMarker(at_line_start=False).marks("more", OUT, 6) == [(0, 6, OUT)]


def test_each_chunk_marks_its_first_line_start_with_what_came_before() -> None:
    assert anchored("b\nc\n", [], True, (7, OUT)) == [(0, 7, OUT)]
    assert anchored("ine\nnext\n", [], False, (7, ERR)) == [(4, 7, ERR)]
    assert anchored("ine\nnext\n", [(2, 8, OUT)], False, (7, ERR)) == [(2, 8, OUT)]
    assert anchored("ine", [], False, (7, ERR)) == []  # no line begins in it
    assert anchored("a\n", [], True, None) == []  # an unmarked log stays unmarked


def lines_of(chunks: list[Chunk], start: int = 0, *, first: Mark | None = None,
             ended: bool = False, full: bool = False) -> tuple[list[dict[str, object]], int]:
    text, starts = page(chunks, start)
    return split_lines(text, starts, start, first=first, ended=ended, full=full)


def test_lines_carry_time_and_stream_and_an_unfinished_line_waits_for_the_next_read() -> None:
    ms = 1_700_000_000_123
    chunks = [Chunk(0, "a\nb", flat([(0, ms, OUT), (2, ms + 1, ERR)])),
              Chunk(3, "c\nd", flat([(2, ms + 2, OWN)]))]
    lines, end = lines_of(chunks)
    assert lines == [
        {"offset": 0, "at": "2023-11-14T22:13:20.123Z", "stream": "stdout", "text": "a"},
        {"offset": 2, "at": "2023-11-14T22:13:20.124Z", "stream": "stderr", "text": "bc"}]
    assert end == 5  # "d" is still being written
    lines, end = lines_of(chunks, ended=True)
    assert lines[-1] == {"offset": 5, "at": iso_ms(ms + 2), "stream": "tagrun", "text": "d"}
    assert end == 6


def test_lines_without_marks_have_no_time_and_a_line_longer_than_a_page_comes_in_pieces(
) -> None:
    assert lines_of([Chunk(0, "old\nagent\n", None)])[0] == [
        {"offset": 0, "at": None, "stream": None, "text": "old"},
        {"offset": 4, "at": None, "stream": None, "text": "agent"}]
    long = [Chunk(0, "xxxx", flat([(0, 7, OUT)])), Chunk(4, "yyyy", [])]
    assert lines_of(long) == ([], 0)
    lines, end = lines_of(long, full=True)
    assert [line["text"] for line in lines] == ["xxxxyyyy"] and end == 8
    # The next page begins in that line: it keeps the line's time and stream.
    first = last_mark(long, 8)
    lines, _ = lines_of([Chunk(8, "zz\n", [])], 8, first=first)
    assert lines == [{"offset": 8, "at": iso_ms(7), "stream": "stdout", "text": "zz"}]


def test_a_read_from_the_middle_of_a_chunk_gives_the_lines_from_there() -> None:
    chunks = [Chunk(0, "ab\ncd\n", flat([(0, 1, OUT), (3, 2, ERR)]))]
    lines, end = lines_of(chunks, 3)
    assert lines == [{"offset": 3, "at": iso_ms(2), "stream": "stderr", "text": "cd"}]
    assert end == 6


def test_a_line_without_a_mark_of_its_own_began_with_the_latest_mark() -> None:
    chunks = [Chunk(0, "a\nb\nc", flat([(0, 1, OUT), (4, 2, ERR)])),
              Chunk(5, "\nd\n", flat([(1, 1, OUT)])),  # its first line start, marked
              Chunk(8, "old\n", None)]  # from a holder that does not mark: unknown
    lines, _ = lines_of(chunks)
    assert [(line["text"], line["stream"], line["at"]) for line in lines] == [
        ("a", "stdout", iso_ms(1)), ("b", "stdout", iso_ms(1)), ("c", "stderr", iso_ms(2)),
        ("d", "stdout", iso_ms(1)), ("old", None, None)]
    # Read from "b": it began with the mark before it, which the page does not hold.
    lines, _ = lines_of(chunks, 2, first=last_mark(chunks[:1], 2))
    assert (lines[0]["text"], lines[0]["at"]) == ("b", iso_ms(1))


def test_marks_move_with_a_text_redacted_around_them() -> None:
    redactor = Redactor({"TOKEN": "s3cr3t-value"})
    text = "a\nkey s3cr3t-value\nb\n"
    marks = [(0, 1, OUT), (2, 2, ERR), (8, 3, OUT), (19, 4, OUT)]  # the 3rd inside the secret
    stored, positions = redactor.text_at(text, [pos for pos, _, _ in marks])
    assert stored == "a\nkey [REDACTED:TOKEN]\nb\n"
    assert moved(marks, positions) == [(0, 1, OUT), (2, 2, ERR), (6, 3, OUT), (23, 4, OUT)]
    assert moved([(2, 2, ERR), (8, 3, OUT)], [6, 6]) == [(6, 3, OUT)]
