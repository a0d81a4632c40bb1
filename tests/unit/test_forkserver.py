"""The fork server behind the sweeps' processes behaves like `python -m MODULE ARGS`."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests import forkserver
from tests.conftest import wait_until
from tests.faults import process_state


def test_a_forked_child_runs_the_module_with_its_own_arguments_and_output(tmp_path):
    source = tmp_path / "in.json"
    source.write_text('{"a": [1, 2]}')
    target = tmp_path / "out.json"
    child = forkserver.shared().spawn(
        "json.tool",
        ["--compact", str(source), str(target)],
        env=dict(os.environ),
        stdout=tmp_path / "out.txt",
        stderr=tmp_path / "err.txt",
    )
    assert child.wait(60) == 0, (tmp_path / "err.txt").read_text()
    assert json.loads(target.read_text()) == {"a": [1, 2]}
    assert child.pid != os.getpid()


def test_a_child_reports_its_exit_code_and_its_stderr(tmp_path):
    child = forkserver.shared().spawn(
        "json.tool", [str(tmp_path / "missing.json")], env=dict(os.environ), stdout=tmp_path / "out.txt"
    )
    out, _ = child.communicate(60)
    assert child.returncode != 0
    assert "missing.json" in out  # stderr merged into stdout when no stderr file is given


def test_a_child_ended_by_a_signal_reports_minus_the_signal_like_popen(tmp_path):
    fifo = tmp_path / "never"
    os.mkfifo(fifo)  # json.tool blocks opening it: a process that waits until it is killed
    child = forkserver.shared().spawn("json.tool", [str(fifo)], env=dict(os.environ), stdout=tmp_path / "o")
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(0.5)
    assert child.poll() is None
    child.send_signal(signal.SIGSTOP)
    wait_until(lambda: process_state(child.pid) == "T", 30, message="the child to freeze")
    child.send_signal(signal.SIGCONT)
    child.kill()
    assert child.wait(30) == -signal.SIGKILL


def test_the_child_sees_only_the_environment_it_was_given(tmp_path):
    out = tmp_path / "env.txt"
    code = "import os, sys; print(os.environ.get('LEDGERFLOW_FORK_PROBE'), os.getcwd() == sys.argv[1])"
    probe = tmp_path / "probe.py"
    probe.write_text(code)
    env = {k: v for k, v in os.environ.items() if k != "LEDGERFLOW_FORK_PROBE"}
    env["PYTHONPATH"] = str(tmp_path)
    child = forkserver.shared().spawn(
        "probe", [str(forkserver.ROOT)], env={**env, "LEDGERFLOW_FORK_PROBE": "given"}, stdout=out
    )
    assert child.wait(60) == 0, out.read_text()
    assert out.read_text().split() == ["given", "True"]
