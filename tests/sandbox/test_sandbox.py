"""The Python sandbox: persistent sessions, limits, and the attacks it must block or survive without harm to the host."""

from __future__ import annotations

import os
import time

import pytest

from puyu.errors import ConfigError
from puyu.sandbox import PythonSandbox


@pytest.fixture(scope="module")
def sandbox():
    box = PythonSandbox(timeout_s=20, cpu_s=3)
    yield box
    box.close()


def test_state_persists_and_reset_forgets(sandbox):
    assert sandbox.run("x = 40\nx + 2").stdout == "42\n"
    result = sandbox.run("print(x, end='')")
    assert (result.stdout, result.error) == ("40", None)
    sandbox.reset()
    assert sandbox.run("x").error == "NameError: name 'x' is not defined"


def test_errors_and_stderr_come_back(sandbox):
    result = sandbox.run("import sys\nprint('out')\nprint('err', file=sys.stderr)\n1/0")
    assert result.stdout == "out\n"
    assert result.stderr.startswith("err\nTraceback")
    assert result.error == "ZeroDivisionError: division by zero"


def test_output_is_truncated():
    with PythonSandbox(max_output=100) as box:
        result = box.run("print('a' * 5000)")
    assert result.stdout.startswith("a" * 100) and "4901 more characters truncated" in result.stdout


def test_writing_outside_its_folder_is_refused(sandbox, tmp_path):
    target = tmp_path / "escape.txt"
    result = sandbox.run(f"open({str(target)!r}, 'w').write('x')")
    assert result.error.startswith("PermissionError") and not target.exists()
    inside = sandbox.run("open('note.txt', 'w').write('hi'); import os; os.getcwd()")
    assert inside.error is None and (sandbox.workdir / "note.txt").read_text() == "hi"


def test_network_socket_is_refused(sandbox):
    result = sandbox.run("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=3)")
    assert result.error == "PermissionError: sandbox: network access is not allowed"


def test_fork_bomb_creates_no_process(sandbox):
    import psutil

    before = len(psutil.Process().children(recursive=True))
    result = sandbox.run("import os\nwhile True:\n    os.fork()")
    assert result.error == "PermissionError: sandbox: creating processes is not allowed"
    assert len(psutil.Process().children(recursive=True)) == before
    # libraries that import subprocess (matplotlib) import, but starting a process is refused
    assert sandbox.run("import subprocess\nsubprocess.run(['true'])").error == "PermissionError: sandbox: creating processes is not allowed"


def test_infinite_loop_hits_the_cpu_limit_and_session_survives(sandbox):
    sandbox.run("kept = 7")
    result = sandbox.run("while True:\n    pass")
    assert result.error.startswith("CPUTimeExceeded")
    assert sandbox.run("kept").stdout == "7\n"


def test_wall_clock_timeout_kills_the_process_group():
    with PythonSandbox(timeout_s=1.5) as box:
        box.run("x = 1")
        pid = box._proc.pid
        start = time.monotonic()
        result = box.run("import time\ntime.sleep(60)")
        assert time.monotonic() - start < 15
        assert result.error.startswith("TimeoutError") and "session reset" in result.error
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        assert box.run("x").error.startswith("NameError")  # a fresh session


def test_allocating_10_gb_raises_memory_error(sandbox):
    result = sandbox.run("block = bytearray(10 * 2**30)")
    assert result.error.startswith("MemoryError")
    assert sandbox.run("1 + 1").stdout == "2\n"


def test_host_environment_secrets_are_not_visible(sandbox, monkeypatch):
    monkeypatch.setenv("PUYU_TEST_SECRET", "hunter2")
    sandbox.reset()  # the next session starts after the secret is set
    result = sandbox.run("import os\nprint(sorted(os.environ))\nprint(os.environ.get('PUYU_TEST_SECRET'))")
    assert "hunter2" not in result.stdout and "PUYU_TEST_SECRET" not in result.stdout
    leak = sandbox.run(f"open('/proc/{os.getpid()}/environ', 'rb').read()")
    assert leak.error.startswith("PermissionError")


def test_killing_its_parent_is_refused(sandbox):
    result = sandbox.run(f"import os, signal\nos.kill({os.getpid()}, signal.SIGKILL)")
    assert result.error == "PermissionError: sandbox: signalling another process is not allowed"
    result = sandbox.run("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert result.error.startswith("PermissionError")


def test_the_policy_holds_without_namespaces(tmp_path):
    """Where the kernel offers no namespaces, the audit hook alone still refuses writes outside and the network."""
    with PythonSandbox(namespaces=False) as box:
        assert box.run(f"open({str(tmp_path / 'x')!r}, 'w')").error.startswith("PermissionError")
        assert box.isolation == ["rlimits", "audit-hook"]
        assert box.run("import socket; socket.socket()").error.endswith("network access is not allowed")
    assert not (tmp_path / "x").exists()


def test_the_folder_is_deleted_on_close():
    box = PythonSandbox()
    folder = box.workdir
    assert folder.is_dir()
    box.close()
    assert not folder.exists()


def test_bad_limits_are_config_errors():
    with pytest.raises(ConfigError, match="timeout_s"):
        PythonSandbox(timeout_s=0)
