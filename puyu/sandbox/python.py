"""A sandboxed Python interpreter: ``PythonSandbox().run(code) -> SandboxResult(stdout, stderr, error)``.

Each sandbox is one long-lived child process (a session): globals persist
between :meth:`PythonSandbox.run` calls like IPython cells, and the last
expression's ``repr`` is printed; :meth:`PythonSandbox.reset` starts afresh.
The child (see :mod:`puyu.sandbox.worker` for the layers) runs in its own
process group and session with a scrubbed environment (no host variables, so no
secrets), in a fresh temporary working folder that is deleted on close, under
these limits:

- wall time per call: the whole process group is killed (SIGKILL), the session
  resets and the call returns ``error="TimeoutError: ..."``;
- CPU time per call (a CPU timer raising ``CPUTimeExceeded`` in the code) and
  per session (``RLIMIT_CPU``);
- memory (``RLIMIT_AS``: a large allocation raises ``MemoryError`` in the code),
  file size (``RLIMIT_FSIZE``), open files, processes (``RLIMIT_NPROC``);
- output: stdout and stderr are each cut to ``max_output`` characters.

Where Linux allows unprivileged namespaces (checked at start; ``isolation``
lists what took effect) the child also gets a network namespace without
interfaces, a read-only view of the filesystem except its folder and a PID
namespace; an audit hook refuses network, processes, signals to other
processes and writes outside the folder with a clear ``PermissionError`` on any
Linux.  Why not a library: the agent and the HumanEval/MBPP scorers need a
persistent session with these exact limits, which neither ``subprocess`` nor
the evaluation harnesses' one-shot ``exec`` runners provide.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

from puyu.errors import ConfigError

log = logging.getLogger(__name__)
WORKER = Path(__file__).with_name("worker.py")
SAFE_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONIOENCODING": "utf-8",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
            "MPLBACKEND": "Agg"}  # matplotlib draws to files (plots the agent's python tool returns), never to a window


@dataclass
class SandboxResult:
    """What one call printed and how it ended: ``error`` is ``None`` or ``"ExcType: message"``."""

    stdout: str
    stderr: str
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None


class PythonSandbox:
    """A persistent, confined Python session in a child process.

    Args:
        timeout_s: wall-clock seconds per call.
        cpu_s: CPU seconds per call.
        session_cpu_s: CPU seconds for the whole session (until :meth:`reset`).
        memory_mb: address-space limit of the child.
        file_mb: largest file the child may write.
        max_output: characters kept of stdout and of stderr per call.
        max_processes: ``RLIMIT_NPROC`` of the child (processes of the same user, so keep it small).
        namespaces: use Linux namespaces when the kernel allows them.
        python: the interpreter to run (default: this one).
    """

    def __init__(self, timeout_s: float = 10.0, cpu_s: float = 10.0, session_cpu_s: int = 600, memory_mb: int = 1024,
                 file_mb: int = 64, max_output: int = 10_000, max_processes: int = 32, namespaces: bool = True,
                 python: str | None = None):
        for name, value in [("timeout_s", timeout_s), ("cpu_s", cpu_s), ("session_cpu_s", session_cpu_s), ("memory_mb", memory_mb),
                            ("file_mb", file_mb), ("max_output", max_output), ("max_processes", max_processes)]:
            if value <= 0:
                raise ConfigError(f"sandbox {name} must be positive, got {value}")
        self.timeout_s, self.cpu_s = timeout_s, cpu_s
        self.config = {"session_cpu_s": int(session_cpu_s), "memory_mb": int(memory_mb), "file_mb": int(file_mb),
                       "max_output": int(max_output), "max_processes": int(max_processes), "namespaces": namespaces}
        self.python = python or sys.executable
        self.isolation: list[str] = []
        self._proc: subprocess.Popen | None = None
        self._workdir: str | None = None
        self._state: dict = {}  # pid, workdir, fds: what the finalizer cleans up if close() is never called
        weakref.finalize(self, PythonSandbox._cleanup, self._state)

    # ---- public -------------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        """The session's working folder (created with the session)."""
        self._ensure_started()
        return Path(self._workdir)

    def run(self, code: str) -> SandboxResult:
        """Run ``code`` in the session; never raises for what the code does."""
        if not isinstance(code, str):
            raise ConfigError(f"sandbox code must be a string, got {type(code).__name__}")
        self._ensure_started()
        try:
            os.write(self._cmd_w, (json.dumps({"code": code, "cpu_s": self.cpu_s}) + "\n").encode())
        except (BrokenPipeError, OSError):
            return self._died("the sandbox process had exited before the call")
        line = self._read_line(self.timeout_s)
        if line is None:
            self._kill()
            return SandboxResult("", "", f"TimeoutError: the code ran longer than {self.timeout_s:g} s of wall time; "
                                         "the process was killed and the session reset")
        if line == b"":
            return self._died("the sandbox process died during the call")
        reply = json.loads(line)
        return SandboxResult(reply["stdout"], reply["stderr"], reply["error"])

    def reset(self) -> None:
        """Forget all state: stop the session and delete its folder; the next call starts a fresh one."""
        self._kill()

    def close(self) -> None:
        self._kill()

    def __enter__(self) -> "PythonSandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- process management ---------------------------------------------------------
    def _ensure_started(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            return
        self._kill()
        self._workdir = tempfile.mkdtemp(prefix="puyu-sandbox-")
        cmd_r, self._cmd_w = os.pipe()
        self._reply_r, reply_w = os.pipe()
        self._buffer = b""
        config = dict(self.config, workdir=self._workdir, cmd_fd=cmd_r, reply_fd=reply_w)
        env = dict(SAFE_ENV, HOME=self._workdir, TMPDIR=self._workdir)
        self._stderr_file = tempfile.TemporaryFile()
        self._proc = subprocess.Popen([self.python, "-I", str(WORKER), json.dumps(config)], cwd=self._workdir, env=env,
                                      stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr_file,
                                      pass_fds=(cmd_r, reply_w), start_new_session=True)
        os.close(cmd_r)
        os.close(reply_w)
        self._state.update(pid=self._proc.pid, workdir=self._workdir, fds=(self._cmd_w, self._reply_r))
        hello = self._read_line(60.0)
        if not hello:
            detail = self._worker_stderr()
            self._kill()
            raise RuntimeError(f"the sandbox process failed to start: {detail or 'no output'}")
        self.isolation = json.loads(hello)["isolation"]
        log.debug("sandbox pid %d in %s with %s", self._proc.pid, self._workdir, ", ".join(self.isolation))

    def _read_line(self, timeout: float) -> bytes | None:
        """One reply line; ``b""`` when the child closed the pipe, ``None`` on timeout."""
        import time

        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._reply_r], [], [], left)[0]:
                return None
            chunk = os.read(self._reply_r, 1 << 16)
            if not chunk:
                return b""
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def _worker_stderr(self) -> str:
        self._stderr_file.seek(0)
        return self._stderr_file.read()[-2000:].decode(errors="replace").strip()

    def _died(self, what: str) -> SandboxResult:
        self._proc.wait(timeout=10)
        code = self._proc.returncode
        cause = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        if code in (-signal.SIGKILL, -signal.SIGXCPU) or code == 128 + signal.SIGKILL:
            cause += " (a resource limit or an outside kill)"
        stderr = self._worker_stderr()
        self._kill()
        return SandboxResult("", stderr, f"SandboxDied: {what} ({cause}); the session was reset")

    def _kill(self) -> None:
        PythonSandbox._cleanup(self._state)
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        self._workdir = None

    @staticmethod
    def _cleanup(state: dict) -> None:
        """Kill the session's process group, close the pipes, delete the folder (also at garbage collection)."""
        if state.get("pid"):
            try:
                os.killpg(state.pop("pid"), signal.SIGKILL)
            except ProcessLookupError:
                pass
        for fd in state.pop("fds", ()):
            try:
                os.close(fd)
            except OSError:
                pass
        if state.get("workdir"):
            shutil.rmtree(state.pop("workdir"), ignore_errors=True)
