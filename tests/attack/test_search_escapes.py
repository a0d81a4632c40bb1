"""A search for text JSON escapes (quotes, backslashes, control characters) finds the values
holding it, in args, kwargs and errors, on both backends and whatever the index's lag."""

from __future__ import annotations

import pytest

from ledgerflow import BadInput, JobFilter, JobSpec
from ledgerflow.engine.search import index_pending


def test_text_with_quotes_backslashes_and_newlines_finds_the_values_holding_it(make_app):
    app = make_app()

    @app.task(name="t", max_attempts=1)
    def t(note: str = "", fail: str | None = None) -> None:
        if fail:
            raise ValueError(fail)

    quote = t.enqueue(note='say "hi" now').id
    path = t.enqueue(note="C:\\temp\\x").id
    lines = t.enqueue(note="line1\nline2").id
    tab = t.enqueue(note="tab\there").id
    failed = t.enqueue(fail='bad "IBAN" given').id
    t.enqueue(note="nothing to see")
    app.run_worker(burst=True)

    def found(**kw: str) -> set[int]:
        return {j.id for j in app.find_jobs(JobFilter(**kw))}

    for indexed in (False, True):  # above the SQLite index mark, then indexed
        if indexed:
            index_pending(app.db)
        assert found(text='say "hi') == {quote}
        assert found(text='"hi"') == {quote}
        assert found(text="C:\\temp") == {path}
        assert found(text="e1\nli") == {lines}
        assert found(text="tab\th") == {tab}
        assert found(error='"iban"') == {failed}
        # JSON syntax still works: the text stored is the JSON text (keys too)
        assert found(text='"note":') == {j.id for j in app.find_jobs()} - {failed}
        assert found(text="\\temp") == {path}


def test_text_no_job_can_hold_is_refused_clearly_not_a_database_error(make_app):
    app = make_app()
    app.enqueue(JobSpec(task="t", kwargs={"note": "abcdef"}))
    for field in ("text", "error"):
        for term in ("ab\x00", "\ud800ab"):
            with pytest.raises(BadInput, match=f"{field} to search for holds a NUL or a lone surrogate"):
                app.find_jobs(JobFilter(**{field: term}))
    assert app.find_jobs(JobFilter(text="   ")) == []  # blanks are a text like any other
