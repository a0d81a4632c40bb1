"""Worker start-up cost: `import ledgerflow` and a burst worker on an empty SQLite database.

Reports wall and CPU seconds (user + system of the child, robust to a loaded machine), median
of `--reps` runs, with the interpreter writing no bytecode (`PYTHONDONTWRITEBYTECODE=1`, as on
the benchmark machine: every start compiles ledgerflow's sources again) and with the sources
compiled once beforehand (what an installed wheel has)."""

from __future__ import annotations

import compileall
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "ledgerflow"


def _run(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(args, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _clear_bytecode() -> None:
    for pyc in SRC.rglob("__pycache__/*.pyc"):
        pyc.unlink()


def measure(reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lf-start-") as tmp:
        url = f"sqlite:///{tmp}/start.db"
        env = {**os.environ, "LEDGERFLOW_DATABASE_URL": url, "PYTHONDONTWRITEBYTECODE": "1"}
        subprocess.run(
            [sys.executable, "-m", "ledgerflow", "migrate"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        commands = {
            "import_ledgerflow": [sys.executable, "-c", "import ledgerflow"],
            "burst_worker_empty_queue": [
                sys.executable,
                "-m",
                "ledgerflow",
                "worker",
                "--burst",
                "--concurrency",
                "4",
            ],
        }
        for compiled in (False, True):
            _clear_bytecode()
            if compiled:
                compileall.compile_dir(str(SRC), quiet=1)
            for name, args in commands.items():
                runs = [_run(args, env) for _ in range(reps)]
                out[f"{name}{'_precompiled' if compiled else ''}"] = {
                    "wall_s_median": round(statistics.median(r[0] for r in runs), 3),
                    "cpu_s_median": round(statistics.median(r[1] for r in runs), 3),
                    "cpu_s_min_max": [round(min(r[1] for r in runs), 3), round(max(r[1] for r in runs), 3)],
                }
        _clear_bytecode()
    out["load_average"] = os.getloadavg()
    return out


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="bench.startup")
    parser.add_argument("--reps", type=int, default=5)
    print(json.dumps(measure(parser.parse_args().reps), indent=2))
