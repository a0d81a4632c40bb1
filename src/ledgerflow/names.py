"""One rule for the names of queues, tasks and schedules, checked wherever a name comes in.

Letters, digits and `_ . : - < >` (a task's default name is its function's `module.qualname`,
which may hold `<locals>`), starting with a letter, digit or `_`. Anything else — spaces,
quotes, `%`, `,` and `=` (the worker's `--queues a,b=4` syntax), control characters, invisible
or right-to-left marks — is refused, so no job waits in a queue that no worker can name.
"""

from __future__ import annotations

import re

from ledgerflow.errors import BadInput

NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:<>-]*")
MAX_LENGTH = {"queue": 100, "task": 200, "schedule": 100}


def check_name(value: object, kind: str) -> str:
    """Return `value` if it is a valid `kind` name ("queue", "task" or "schedule"), else raise BadInput."""
    limit = MAX_LENGTH[kind]
    if not isinstance(value, str) or not value:
        raise BadInput(f"{kind} name is empty")
    if len(value) > limit or not NAME_PATTERN.fullmatch(value):
        raise BadInput(
            f"invalid {kind} name {value[:120]!r}: use up to {limit} letters, digits and _ . : - < > "
            "(starting with a letter, digit or _)"
        )
    return value
