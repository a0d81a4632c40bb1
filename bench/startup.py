"""Worker start-up cost: `import ledgerflow` and a burst worker on an empty SQLite database.

Reports wall and CPU seconds (user + system of the child, robust to a loaded machine), median
of `--reps` runs, with the interpreter writing no bytecode (`PYTHONDONTWRITEBYTECODE=1`, as on
the benchmark machine: every start compiles ledgerflow's sources again) and with the sources
compiled once beforehand (what an installed wheel has).

`--first-job DATABASE_URL` measures instead what the fair benchmark's start-up skew comes from:
spawn of `python -m ledgerflow worker` -> start of its first job (one `bench.noop` enqueued
beforehand, stamped by bench/stamp.py) and the worker's CPU, sources precompiled. Given several
`--tree` paths (ledgerflow checkouts, e.g. an old commit's worktree), the runs alternate between
them (A, B, A, B, ...) so that a change of the machine's load hits both alike."""

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


def _first_job(tree: Path, url: str, stamps: Path) -> tuple[float, float]:
    """One worker from spawn to its first job: (seconds, CPU seconds of the whole burst run)."""
    env = {**os.environ, "LEDGERFLOW_DATABASE_URL": url, "BENCH_STAMPS": str(stamps)}
    env["PYTHONPATH"] = os.pathsep.join([str(tree / "src"), str(ROOT)])
    cli = [sys.executable, "-m", "ledgerflow", "--app", "bench.apps:app"]
    enqueue = [*cli, "jobs", "enqueue", "bench.noop", "--queue", "default"]
    subprocess.run(enqueue, env=env, cwd=ROOT, check=True, capture_output=True)
    stamps.unlink(missing_ok=True)
    spawned = time.time()
    _, cpu = _run([*cli, "worker", "--queues", "default", "--burst", "--concurrency", "4"], env)
    return float(stamps.read_text().split()[1]) - spawned, cpu


def first_job(url: str, trees: list[Path], reps: int) -> dict[str, Any]:
    """`reps` interleaved rounds of `_first_job` per tree: median (min-max) of each figure."""
    for tree in trees:
        compileall.compile_dir(str(tree / "src" / "ledgerflow"), quiet=1)
    compileall.compile_dir(str(ROOT / "bench"), quiet=1)
    env = {**os.environ, "LEDGERFLOW_DATABASE_URL": url, "PYTHONPATH": str(trees[0] / "src")}
    subprocess.run([sys.executable, "-m", "ledgerflow", "migrate"], env=env, check=True, capture_output=True)
    runs: dict[Path, list[tuple[float, float]]] = {tree: [] for tree in trees}
    load = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="lf-first-") as tmp:
        for _ in range(reps):
            for tree in trees:
                runs[tree].append(_first_job(tree, url, Path(tmp) / "stamps"))
            load.append(os.getloadavg()[0])

    def spread(values: list[float]) -> str:
        return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"

    return {
        "trees": {
            str(tree): {
                "spawn_to_first_job_s": spread([r[0] for r in got]),
                "worker_cpu_s": spread([r[1] for r in got]),
            }
            for tree, got in runs.items()
        },
        "load_average_1min": f"{min(load):.2f}-{max(load):.2f}",
    }


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="bench.startup")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--first-job", metavar="DATABASE_URL", help="spawn -> first job on this database")
    parser.add_argument("--tree", type=Path, action="append", help="a ledgerflow checkout (repeatable)")
    args = parser.parse_args()
    if args.first_job:
        print(json.dumps(first_job(args.first_job, args.tree or [ROOT], args.reps), indent=2))
    else:
        print(json.dumps(measure(args.reps), indent=2))
