"""The `ledgerflow` command line (Typer)."""
