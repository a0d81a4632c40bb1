from ledgerflow.cli.main import run

run()
