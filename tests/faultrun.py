"""Run the ledgerflow CLI with the statement fault of `LEDGERFLOW_TEST_FAULT` installed.

    LEDGERFLOW_TEST_FAULT=kill:17 python -m tests.faultrun export run --date 2026-11-26

With `LEDGERFLOW_TEST_FAULT_LOG=FILE`, each numbered statement is appended to FILE as it is
counted (so a parent test can count a clean subprocess run): its kind (`execute`, `commit`, or
`autocommit` for a statement that commits alone), thread and SQL.
"""

from __future__ import annotations

import os
import sys

from tests.faults import Statement, StatementFaults, from_environment, install_on_every_database


def main() -> None:
    faults = from_environment() or StatementFaults()
    log_path = os.environ.get("LEDGERFLOW_TEST_FAULT_LOG")
    if log_path:
        only = faults.only

        def record(statement: Statement) -> bool:
            if only is not None and not only(statement):
                return False
            with open(log_path, "a", encoding="utf-8") as out:
                kind = "autocommit" if statement.autocommit else statement.kind  # commits alone
                out.write(f"{kind}\t{statement.thread}\t{' '.join(statement.sql.split())[:200]}\n")
            return True

        faults.only = record
    install_on_every_database(faults)
    from ledgerflow.cli.main import run

    sys.argv = ["ledgerflow", *sys.argv[1:]]
    run()


if __name__ == "__main__":
    main()
