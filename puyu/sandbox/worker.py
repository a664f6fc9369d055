"""The process inside :class:`~puyu.sandbox.PythonSandbox`: confines itself, then runs code.

Run as ``python -I worker.py CONFIG_JSON`` with the command pipe on fd
``cmd_fd`` and the reply pipe on fd ``reply_fd``.  It imports only the standard
library.  Start-up, in this order:

1. **Namespaces** (Linux, when the kernel allows them): a new user, mount,
   network and PID namespace.  The whole filesystem is remounted read-only except
   the working folder; the network namespace has no interfaces; in the new PID
   namespace the host's processes have no numbers, and the new user namespace has
   no capabilities over the host (e.g. it cannot read ``/proc/<host pid>/environ``).
   The process forks once so that the worker is the namespace's first process;
   the outer one only waits and passes on the exit status.
2. **Resource limits** (``setrlimit``): address space, the session's CPU time,
   file size, open files, processes, no core files; each call also gets a CPU
   timer (``ITIMER_PROF``) that raises :class:`CPUTimeExceeded` in the code.
3. **An audit hook** (:func:`sys.addaudithook`) that refuses, with a clear
   ``PermissionError``: internet sockets, creating processes, signalling other
   processes, writing outside the working folder, reading other processes'
   ``/proc`` entries, foreign calls through ``ctypes`` and changing the limits.
   It is the layer that words the errors; the kernel layers above are the
   boundary (an audit hook alone is not a security boundary).

Protocol: one JSON object per line.  Command ``{"code": str, "cpu_s": float}``;
reply ``{"stdout", "stderr", "error"}`` (``error`` is ``None`` or
``"ExcType: message"``).  The namespace of globals persists between commands.
"""

import ast
import builtins
import io
import json
import os
import resource
import signal
import sys
import traceback

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 1 << 18
MOUNT_ATTR_RDONLY, AT_FDCWD, AT_RECURSIVE, SYS_MOUNT_SETATTR = 0x1, -100, 0x8000, 442
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
PROCESS_EVENTS = frozenset({"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                            "subprocess.Popen", "pty.spawn"})
PATH_EVENTS = frozenset({"os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate", "os.utime",
                         "os.rename", "os.link", "os.symlink", "shutil.rmtree", "shutil.copyfile", "shutil.move"})


def _set_mount_attr(libc, ctypes, path: bytes, attr_set: int, attr_clr: int) -> bool:
    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    attr = MountAttr(attr_set, attr_clr, 0, 0)
    return libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, path, AT_RECURSIVE, ctypes.byref(attr), ctypes.sizeof(attr)) == 0


def enter_namespaces(workdir: str) -> list[str]:
    """Unshare user, mount, network and PID namespaces; return the layers that took effect."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID) != 0:
        return []
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    for name, ident in (("uid_map", uid), ("gid_map", gid)):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(f"{ident} {ident} 1")
    layers = ["user-namespace", "network-namespace"]
    path = workdir.encode()
    if (libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) == 0
            and libc.mount(path, path, None, MS_BIND | MS_REC, None) == 0
            and _set_mount_attr(libc, ctypes, b"/", MOUNT_ATTR_RDONLY, 0)
            and _set_mount_attr(libc, ctypes, path, 0, MOUNT_ATTR_RDONLY)):
        layers.append("read-only-filesystem")
    child = os.fork()  # the child is process 1 of the new PID namespace
    if child:
        _, status = os.waitpid(child, 0)
        if os.WIFSIGNALED(status):  # die the same way, so the host sees the real cause
            signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
            os.kill(os.getpid(), os.WTERMSIG(status))
        os._exit(os.waitstatus_to_exitcode(status))
    return layers + ["pid-namespace"]


def set_limits(config: dict) -> None:
    mem = config["memory_mb"] * 2**20
    limits = {resource.RLIMIT_AS: mem, resource.RLIMIT_CPU: (config["session_cpu_s"], config["session_cpu_s"] + 5),
              resource.RLIMIT_FSIZE: config["file_mb"] * 2**20, resource.RLIMIT_NOFILE: 64,
              resource.RLIMIT_NPROC: config["max_processes"], resource.RLIMIT_CORE: 0}
    for kind, value in limits.items():
        resource.setrlimit(kind, value if isinstance(value, tuple) else (value, value))


def install_policy(workdir: str, self_pid: int) -> None:
    """The audit hook that words refusals (see the module docstring)."""
    import socket

    allowed_families = (socket.AF_UNIX,)
    root = os.path.realpath(workdir) + os.sep

    def inside(path) -> bool:
        if isinstance(path, int):
            return True
        path = os.fsdecode(path)
        return (os.path.realpath(path) + os.sep).startswith(root) or path in ("/dev/null",)

    def deny(what: str):
        raise PermissionError(f"sandbox: {what} is not allowed")

    def policy(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
            if writes and path is not None and not inside(path):
                deny(f"writing {os.fsdecode(path)!s} (outside the working folder {workdir})")
            text = os.fsdecode(path) if isinstance(path, (str, bytes)) else ""
            if text.startswith("/proc/") and text.split("/")[2].isdigit() and int(text.split("/")[2]) != os.getpid():
                deny(f"reading {text} (another process)")
        elif event in PATH_EVENTS:
            for arg in args[:2]:
                if isinstance(arg, (str, bytes, os.PathLike)) and not inside(arg):
                    deny(f"{event} on {os.fsdecode(arg)} (outside the working folder {workdir})")
        elif event == "socket.__new__" and args[1] not in allowed_families and args[1] != -1:
            deny("network access")
        elif event in ("socket.connect", "socket.bind", "socket.sendto", "socket.getaddrinfo"):
            if event == "socket.getaddrinfo" or args[0].family not in allowed_families:
                deny("network access")
        elif event in PROCESS_EVENTS or event == "import" and args[0] in ("_posixsubprocess", "multiprocessing"):
            deny("creating processes")
        elif event in ("os.kill", "os.killpg") and args[0] not in (os.getpid(), self_pid):
            deny("signalling another process")
        elif event in ("ctypes.call_function", "ctypes.dlopen", "ctypes.dlsym", "resource.setrlimit", "resource.prlimit"):
            deny(event)
        elif event == "object.__setattr__" and args[0] is policy:
            deny("changing the sandbox policy")

    sys.addaudithook(policy)


class CappedWriter(io.TextIOBase):
    """A text stream that keeps the first ``limit`` characters and counts the rest."""

    def __init__(self, limit: int):
        self.limit, self.parts, self.kept, self.dropped = limit, [], 0, 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        room = self.limit - self.kept
        self.parts.append(text[:room]) if room > 0 else None
        self.kept += min(len(text), max(room, 0))
        self.dropped += max(len(text) - max(room, 0), 0)
        return len(text)

    def value(self) -> str:
        text = "".join(self.parts)
        return text + (f"\n[... {self.dropped} more characters truncated]" if self.dropped else "")


class CPUTimeExceeded(Exception):
    """The call used more CPU time than its limit."""


def run_code(code: str, namespace: dict, cpu_s: float, max_output: int) -> dict:
    """Execute ``code`` in ``namespace`` like a REPL cell; the last expression's repr is printed."""
    out, err = CappedWriter(max_output), CappedWriter(max_output)
    error = None
    sys.stdout, sys.stderr = out, err
    signal.setitimer(signal.ITIMER_PROF, cpu_s)  # SIGPROF after cpu_s of this process's CPU time
    try:
        tree = ast.parse(code, "<sandbox>", "exec")
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, "<sandbox>", "exec"), namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), "<sandbox>", "eval"), namespace)
            if value is not None:
                print(repr(value))
    except BaseException as exc:  # noqa: BLE001 - every failure of user code goes back to the caller
        if isinstance(exc, CPUTimeExceeded):
            exc = CPUTimeExceeded(f"the code used more than {cpu_s:g} s of CPU time")
        error = f"{type(exc).__name__}: {exc}"
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "<sandbox>"]
        err.write("Traceback (most recent call last):\n" + "".join(traceback.format_list(frames)) + error + "\n")
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
    return {"stdout": out.value(), "stderr": err.value(), "error": error}


def main() -> None:
    config = json.loads(sys.argv[1])
    workdir = config["workdir"]
    cmd_in, reply_out = os.fdopen(config["cmd_fd"], "r"), os.fdopen(config["reply_fd"], "w")
    layers = enter_namespaces(workdir) if config["namespaces"] else []
    os.chdir(workdir)
    set_limits(config)

    def on_xcpu(signum, frame):
        raise CPUTimeExceeded()

    signal.signal(signal.SIGPROF, on_xcpu)  # the per-call CPU timer
    signal.signal(signal.SIGXCPU, on_xcpu)  # the session's soft RLIMIT_CPU (the hard one kills)
    # Loaded before the policy, so libraries that merely import ``subprocess`` (matplotlib ...) import;
    # starting a process stays refused by the ``subprocess.Popen``/``os.*`` events.
    import subprocess  # noqa: F401

    install_policy(workdir, os.getpid())
    reply_out.write(json.dumps({"ready": True, "isolation": layers + ["rlimits", "audit-hook"]}) + "\n")
    reply_out.flush()
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    for line in cmd_in:
        command = json.loads(line)
        reply = run_code(command["code"], namespace, command["cpu_s"], config["max_output"])
        reply_out.write(json.dumps(reply) + "\n")
        reply_out.flush()


if __name__ == "__main__":
    main()
