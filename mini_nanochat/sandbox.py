"""
Run untrusted, model-written Python (HumanEval completions) in a sandboxed subprocess.

HumanEval scores a model by *running* the code it writes against unit tests. That code is untrusted
input: a barely trained model writes `while True:` loops, giant lists and `os.remove(...)` by accident,
and an RL policy that is rewarded for passing tests will find any shortcut we leave open (`exit(0)`
before the asserts run is the classic one). So each program runs in a fresh process wrapped in layers;
each layer exists because the ones before it miss something:

1. **A fresh process.** `python -I -B -u` (isolated mode: no PYTHON* variables, no user site, no
   script directory on sys.path; no .pyc files; unbuffered, so output written before a timeout is
   kept). Its cwd, HOME and TMPDIR are its own new temp dir, removed afterwards, even after a timeout.
   The environment is rebuilt from scratch (PATH, HOME, TMPDIR, LANG, MALLOC_ARENA_MAX): no token,
   proxy or MINI_NANOCHAT_* variable leaks in. stdin is /dev/null. stdout and stderr go to files, not
   pipes, so a program printing forever cannot fill our memory; we read back only the head and tail.
2. **Resource limits** (`setrlimit` between fork and exec): address space (memory_mb), CPU seconds,
   file size (which also bounds the output files), open files, no core dumps. The program runs in its
   own session; on the wall-clock timeout we SIGKILL the whole process group, children included.
3. **A Python guard** installed inside the child before the program runs: process creation, signals,
   `os._exit`, sockets and DNS, and writes/deletes outside the sandbox dir raise PermissionError;
   ctypes and multiprocessing cannot be imported. Like the `reliability_guard` of OpenAI's
   human-eval (whose docstring says it "is NOT a security sandbox"), this stops accidents, not an
   attacker: everything it patches is a Python attribute, and Python code can find the originals.
   It also makes "passed" mean "ran to its last line": exit(0) before the end counts as a failure.
4. **Linux namespaces, when they work here** (`unshare --user --map-root-user --mount --net`, from
   util-linux): a network namespace has no interface up, so nothing can be reached, loopback
   included; a mount namespace in which we remount every mount read-only except the sandbox dir, then
   lock that with a second (nested) user namespace so the program cannot remount it writable. These
   are enforced by the kernel, so they also hold for C code (sqlite3, a bypassed guard).
   We probe them once (`isolation()` reports the result) and run without them when they fail (no
   `unshare`, user namespaces disabled, a seccomp profile that forbids them).
5. **A pids cgroup, when we may create one** (root, cgroup v1 or a delegated v2 subtree): at most
   `_MAX_TASKS` processes and threads, so a fork bomb that gets past the guard stalls instead of
   exhausting the machine's process table, and every process that escaped the process group
   (`setsid`) is still found and killed. This matters because we run as root, and RLIMIT_NPROC is not
   enforced for root.

What is still open (docs/adrs/0032-sandbox.md): without layer 4 the guard is the only thing between the
program and the file system and network. With it, the program is still uid 0 to the kernel, and a
read-only mount does not protect device nodes (/dev/...): only the guard refuses writing to them. There
is no PID namespace (the program can see other processes; the guard refuses os.kill), and disk use is
bounded per file, not in total. Evaluate model code on a machine you can afford to lose.

    >>> r = run_python("print(sum(range(10)))")
    >>> r.status, r.stdout
    ('passed', '45\\n')
"""
from __future__ import annotations

import builtins
import functools
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import types
import uuid
from dataclasses import dataclass

_MAX_FILE_BYTES = 16 * 2**20  # RLIMIT_FSIZE: the biggest file (stdout included) a program may write
_MAX_OPEN_FILES = 128  # RLIMIT_NOFILE
_MAX_TASKS = 64  # pids.max of the cgroup: processes + threads (ThreadPoolExecutor uses up to 32)
_CLEANUP_SECONDS = 2.0  # how long we keep killing stragglers before giving up
_SCRUBBED_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass
class SandboxResult:
    """What happened to one program.

    status: "passed" (exit code 0: the program ran to its last line), "failed" (non-zero exit, e.g.
    an AssertionError or a refused operation), "timeout" (the wall-clock or CPU limit), "memory"
    (it died of a MemoryError: the address-space limit), "killed" (any other signal, e.g. SIGSEGV).
    stdout / stderr: at most max_output characters each; a longer stream keeps its head and tail,
    with a marker saying how much was cut. isolation: the layers this run actually had.
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    isolation: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def check_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program HumanEval runs for one item: the prompt (signature + docstring), the model's
    completion (the body), the item's `check(candidate)` function, and a call to it.

    >>> print(check_program("def f():\\n", "    return 1\\n", "def check(c):\\n    assert c() == 1\\n", "f"))
    def f():
        return 1
    <BLANKLINE>
    def check(c):
        assert c() == 1
    <BLANKLINE>
    check(f)
    <BLANKLINE>
    """
    return prompt + completion + "\n" + test + f"\ncheck({entry_point})\n"


def run_python(program: str, timeout: float = 10.0, memory_mb: int = 1024, max_output: int = 65536) -> SandboxResult:
    """Run `program` (Python source) in a sandboxed subprocess with every layer this machine supports
    (see the module docstring and `isolation()`), and report how it ended."""
    return _run(program, timeout, memory_mb, max_output)


def isolation() -> str:
    """Which layers `run_python` uses on this machine, in words (probed once per process)."""
    layers = ["fresh `python -I -B` process in its own temp dir with a scrubbed environment",
              "rlimits (address space, CPU, file size, open files, no core)",
              "process-group kill on timeout",
              "Python guard (no processes, sockets, or writes outside the dir)"]
    if _namespaces_work():
        layers.append("namespaces: network (no interface up), mount (read-only except the sandbox dir, locked)")
    else:
        layers.append("no namespaces (unshare unavailable or refused here): the guard alone refuses network and writes")
    cgroup = _pids_cgroup_parent() if _cgroup_works() else None
    layers.append(f"pids cgroup at {cgroup} (at most {_MAX_TASKS} tasks)" if cgroup
                  else "no pids cgroup: a fork bomb past the guard is bounded only by the timeout")
    return "; ".join(layers)


# ----------------------------------------------------------------------------------------------------
# The parent side: build the temp dir, start the child under its limits, wait, kill, clean up.


def _run(program: str, timeout: float, memory_mb: int, max_output: int, *, guard: bool = True,
         namespaces: bool | None = None, cgroup: bool | None = None) -> SandboxResult:
    """run_python with each layer switchable, so the tests can show that each one holds on its own.
    None means "use it if this machine supports it"."""
    if namespaces is None:
        namespaces = _namespaces_work()
    if cgroup is None:
        cgroup = _cgroup_works()

    root = tempfile.mkdtemp(prefix="mini_nanochat_sandbox_")  # 0700, ours
    pids = None
    proc = None
    try:
        # The program's own dir is root/work. Its source and its output files sit next to it, outside,
        # so the program cannot overwrite them (the guard, and the read-only mount, refuse that).
        work = os.path.join(root, "work")
        os.mkdir(work)
        program_path = os.path.join(root, "program.py")
        with open(program_path, "w", encoding="utf-8") as f:
            f.write(program)
        out_path, err_path = os.path.join(root, "stdout"), os.path.join(root, "stderr")

        pids = _PidsCgroup.create() if cgroup else None
        layers = ["rlimits", "process group"] + (["guard"] if guard else []) + (["namespaces"] if namespaces else [])
        layers += [f"pids cgroup ({_MAX_TASKS})"] if pids else []

        child = [sys.executable, "-I", "-B", "-u", os.path.abspath(__file__), "--child"]
        child += ([] if guard else ["--no-guard"]) + (["--lock-fs"] if namespaces else []) + [program_path]
        if namespaces:
            child = [shutil.which("unshare"), "--user", "--map-root-user", "--mount", "--net", "--"] + child
        env = {"PATH": _SCRUBBED_PATH, "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
               # RLIMIT_AS counts reserved address space, and glibc reserves 64 MB per malloc arena, up to
               # one per thread: with the default, 21 threads exhausted 1024 MB. Two arenas are enough.
               "MALLOC_ARENA_MAX": "2"}
        limits = functools.partial(
            _limit_child,
            memory_bytes=int(memory_mb) * 2**20,
            cpu_seconds=math.ceil(timeout) + 1,  # the wall clock normally fires first; this catches threads
            file_bytes=max(_MAX_FILE_BYTES, 4 * max_output),
            cgroup_fd=pids.open_procs() if pids else None,
        )
        timed_out = False
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            start = time.monotonic()
            try:
                proc = subprocess.Popen(child, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                        stderr=err, start_new_session=True, preexec_fn=limits)
            finally:
                if limits.keywords["cgroup_fd"] is not None:
                    os.close(limits.keywords["cgroup_fd"])
            try:
                returncode = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc.pid)  # the whole group: the program and everything it started
                returncode = proc.wait()
            seconds = time.monotonic() - start
        stdout = _read_bounded(out_path, max_output)
        stderr = _read_bounded(err_path, max_output)
        return SandboxResult(_status(returncode, stderr, timed_out), returncode, stdout, stderr, seconds,
                             ", ".join(layers))
    finally:
        # Whatever happened (even KeyboardInterrupt in wait), nothing the program started survives it:
        # first its process group, then anything that left the group but not the cgroup.
        if proc is not None:
            _kill_group(proc.pid)
            proc.wait()
        if pids is not None:
            pids.remove()
        _remove_tree(root)


def _limit_child(memory_bytes: int, cpu_seconds: int, file_bytes: int, cgroup_fd: int | None) -> None:
    """Runs in the child between fork and exec (Popen's preexec_fn). Kept to system calls: it must not
    take a lock (an import, logging) that another thread of the parent might have held at the fork."""
    if cgroup_fd is not None:
        os.write(cgroup_fd, b"0")  # "0" = the writing process: join the pids cgroup before anything else
    # (limit, soft, hard). RLIMIT_CPU: the soft limit sends SIGXCPU, the hard one a second later SIGKILL.
    for limit, soft, hard in ((resource.RLIMIT_AS, memory_bytes, memory_bytes),
                              (resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 1),
                              (resource.RLIMIT_FSIZE, file_bytes, file_bytes),
                              (resource.RLIMIT_NOFILE, _MAX_OPEN_FILES, _MAX_OPEN_FILES),
                              (resource.RLIMIT_CORE, 0, 0)):
        current_hard = resource.getrlimit(limit)[1]
        if current_hard != resource.RLIM_INFINITY:  # we may lower a limit, never raise one
            soft, hard = min(soft, current_hard), min(hard, current_hard)
        resource.setrlimit(limit, (soft, hard))


def _kill_group(pgid: int) -> None:
    """SIGKILL the process group until no live process is left in it (one that was forking when the
    first signal arrived may have a child the signal missed)."""
    deadline = time.monotonic() + _CLEANUP_SECONDS
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return  # no process left in the group
        if not _live_members(pgid) or time.monotonic() > deadline:
            return
        time.sleep(0.01)


def _live_members(pgid: int) -> list[int]:
    """The processes of a group that are not zombies. killpg alone cannot tell: it "succeeds" while the
    group holds a zombie, and an orphaned zombie waits for PID 1 to reap it (on this project's VM that
    took over a second). A zombie is already dead; we only need the living ones gone."""
    if not os.path.isdir("/proc"):
        return [pgid]  # no /proc (not Linux): assume alive; the loop above ends at its deadline
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()  # after "pid (command name)"
            except (OSError, IndexError):
                continue
            state, pgrp = fields[0], int(fields[2])
            if pgrp == pgid and state not in ("Z", "X"):
                members.append(int(entry))
    return members


def _remove_tree(path: str) -> None:
    """rmtree that first makes a dir writable again (a program may chmod its own dir to 0)."""
    def fix_and_retry(function, failed_path, _exc_info):
        try:
            os.chmod(os.path.dirname(failed_path), 0o700)
            os.chmod(failed_path, 0o700)
            function(failed_path)
        except OSError:
            pass
    if sys.version_info >= (3, 12):
        shutil.rmtree(path, onexc=fix_and_retry)  # onerror is deprecated from 3.12
    else:
        shutil.rmtree(path, onerror=fix_and_retry)


def _read_bounded(path: str, max_output: int) -> str:
    """At most max_output characters of a stream: all of it, or its head and tail with a marker in the
    middle (the head shows what the program started doing, the tail shows the traceback). We never
    read more than 4 * max_output bytes from each end (a UTF-8 character has at most 4 bytes)."""
    size = os.path.getsize(path)
    span = 4 * max(max_output, 0)
    with open(path, "rb") as f:
        if size <= 2 * span:
            head = tail = f.read().decode("utf-8", "replace")
            if len(head) <= max_output:
                return head
        else:
            head = f.read(span).decode("utf-8", "replace")
            f.seek(size - span)
            tail = f.read(span).decode("utf-8", "replace")
    marker = f"\n[... sandbox: output cut to {max_output} characters; the stream had {size} bytes ...]\n"
    keep = max_output - len(marker)
    if keep <= 0:
        return marker[:max(max_output, 0)]
    return head[: keep - keep // 2] + marker + tail[len(tail) - keep // 2:]


def _status(returncode: int, stderr: str, timed_out: bool) -> str:
    if timed_out or returncode == -signal.SIGXCPU:
        return "timeout"
    if returncode == 0:
        return "passed"
    if returncode < 0:
        return "killed"
    last = stderr.rstrip().rsplit("\n", 1)[-1]
    # RLIMIT_AS makes the allocation fail, Python raises MemoryError, the traceback ends with it.
    return "memory" if last.startswith("MemoryError") else "failed"


# ----------------------------------------------------------------------------------------------------
# Optional OS layers: probed once, used only when they demonstrably work on this machine.


@functools.lru_cache(maxsize=None)
def _namespaces_work() -> bool:
    """Run a probe inside the namespaces, without the guard, and require all three effects: loopback
    unreachable, the parent dir read-only, and the read-only mount locked against remounting."""
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return False
    probe = (
        "import ctypes, errno, json, os, socket\n"
        "r = {}\n"
        "try:\n    socket.create_connection(('127.0.0.1', 9), timeout=1); r['net'] = False\n"
        "except OSError as e:\n    r['net'] = e.errno == errno.ENETUNREACH\n"
        "try:\n    open(os.path.join(os.path.dirname(os.getcwd()), 'probe'), 'w'); r['fs'] = False\n"
        "except OSError as e:\n    r['fs'] = e.errno == errno.EROFS\n"
        "open('inside', 'w').write('ok')\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "r['locked'] = libc.mount(None, b'/', None, 32 | 4096, None) != 0  # MS_REMOUNT | MS_BIND\n"
        "print(json.dumps(r))\n"
    )
    try:
        r = _run(probe, 20.0, 1024, 4096, guard=False, namespaces=True, cgroup=False)
        return r.passed and json.loads(r.stdout) == {"net": True, "fs": True, "locked": True}
    except (OSError, ValueError, subprocess.SubprocessError):
        return False


def _pids_cgroup_parent() -> str | None:
    """The directory under which we may create a pids cgroup: our own cgroup in the v1 "pids" hierarchy,
    or in the v2 hierarchy if its subtree_control enables "pids" (delegated to us). None otherwise."""
    try:
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[:4] for line in f]
        with open("/proc/self/cgroup") as f:
            memberships = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return None
    for _device, mount_point, fstype, options in mounts:
        for _id, controllers, path in memberships:
            if fstype == "cgroup" and "pids" in options.split(",") and "pids" in controllers.split(","):
                parent = mount_point + path.rstrip("/")
            elif fstype == "cgroup2" and controllers == "":
                parent = mount_point + path.rstrip("/")
                try:
                    with open(os.path.join(parent, "cgroup.subtree_control")) as f:
                        if "pids" not in f.read().split():
                            continue
                except OSError:
                    continue
            else:
                continue
            if os.access(parent, os.W_OK):
                return parent
    return None


@functools.lru_cache(maxsize=None)
def _cgroup_works() -> bool:
    pids = _PidsCgroup.create()
    if pids is None:
        return False
    pids.remove()
    return True


class _PidsCgroup:
    """One cgroup per run, named mini_nanochat_sandbox_<our pid>_<random>, with pids.max = _MAX_TASKS.
    The child joins it between fork and exec; everything it starts is counted and can be listed."""

    def __init__(self, path: str):
        self.path = path

    @classmethod
    def create(cls) -> _PidsCgroup | None:
        parent = _pids_cgroup_parent()
        if parent is None:
            return None
        path = os.path.join(parent, f"mini_nanochat_sandbox_{os.getpid()}_{uuid.uuid4().hex[:8]}")
        try:
            os.mkdir(path)
        except OSError:
            return None
        try:
            with open(os.path.join(path, "pids.max"), "w") as f:
                f.write(str(_MAX_TASKS))
        except OSError:
            os.rmdir(path)
            return None
        return cls(path)

    def open_procs(self) -> int:
        """A file descriptor on cgroup.procs, opened here so that the child only has to write to it."""
        return os.open(os.path.join(self.path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)

    def members(self) -> list[int]:
        try:
            with open(os.path.join(self.path, "cgroup.procs")) as f:
                return [int(line) for line in f if line.strip()]
        except OSError:
            return []

    def remove(self) -> None:
        """Kill every member (repeatedly: a member may be forking) and remove the cgroup."""
        deadline = time.monotonic() + _CLEANUP_SECONDS
        while True:
            for pid in self.members():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.rmdir(self.path)  # EBUSY while a member is alive
                return
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    return  # leave it; its name says whose it is
                time.sleep(0.01)


# ----------------------------------------------------------------------------------------------------
# The child side. This file is also the child's bootstrap: `python -I -B -u sandbox.py --child
# [--no-guard] [--lock-fs] PROGRAM` (stdlib imports only, so it starts fast and imports nothing of ours).

_PROCESS_FUNCTIONS = (
    "fork", "forkpty", "system", "popen", "posix_spawn", "posix_spawnp",
    "execl", "execle", "execlp", "execlpe", "execv", "execve", "execvp", "execvpe",
    "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp", "spawnvpe",
    "kill", "killpg", "_exit", "chroot", "setsid",
)
_BLOCKED_IMPORTS = ("ctypes", "_ctypes", "multiprocessing", "_multiprocessing")
_NETWORK_FUNCTIONS = ("create_connection", "create_server", "fromfd", "socketpair", "getaddrinfo",
                      "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo", "sethostname")
# os functions that change the file system: (position, keyword, its dir_fd keyword, follow symlinks?)
_PATH_FUNCTIONS = {
    "remove": [(0, "path", "dir_fd", False)],
    "unlink": [(0, "path", "dir_fd", False)],
    "rmdir": [(0, "path", "dir_fd", False)],
    "mkdir": [(0, "path", "dir_fd", False)],
    "mkfifo": [(0, "path", "dir_fd", False)],
    "mknod": [(0, "path", "dir_fd", False)],
    "rename": [(0, "src", "src_dir_fd", False), (1, "dst", "dst_dir_fd", False)],
    "replace": [(0, "src", "src_dir_fd", False), (1, "dst", "dst_dir_fd", False)],
    "link": [(0, "src", "src_dir_fd", True), (1, "dst", "dst_dir_fd", False)],  # a hard link to an outside file
    "symlink": [(1, "dst", "dir_fd", False)],  # the target may point anywhere: writes through it are checked
    "truncate": [(0, "path", None, True)],
    "chmod": [(0, "path", "dir_fd", True)],
    "chown": [(0, "path", "dir_fd", True)],
    "lchown": [(0, "path", None, False)],
    "fchmod": [(0, "fd", None, True)],
    "fchown": [(0, "fd", None, True)],
    "utime": [(0, "path", "dir_fd", True)],
    "setxattr": [(0, "path", None, True)],
    "removexattr": [(0, "path", None, True)],
}
_OPEN_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _refuser(what: str):
    def refused(*args, **kwargs):
        raise PermissionError(f"sandbox: {what} is disabled")
    refused.__name__ = refused.__qualname__ = what.rsplit(".", 1)[-1]
    return refused


class _BlockImports:
    """A sys.meta_path finder that refuses some modules by name (ctypes would undo the whole guard)."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.names:
            raise ImportError(f"sandbox: importing {fullname} is disabled", name=fullname)
        return None


def _install_guard(work: str) -> None:
    """Patch the Python-level doors out of the sandbox shut. Everything refused raises PermissionError
    with a message starting "sandbox:", so a failing program says why it failed."""
    import _io
    import _posixsubprocess
    import _socket
    import io
    import posix
    import socket

    # 1. No new processes and no signals to others (os and posix hold the same functions; patch both).
    #    os._exit is refused too: `os._exit(0)` before the asserts would otherwise count as a pass.
    for name in _PROCESS_FUNCTIONS:
        for module in (os, posix):
            if hasattr(module, name):
                setattr(module, name, _refuser(f"os.{name}"))

    class Popen(subprocess.Popen):  # a subclass, so isinstance checks elsewhere still work
        def __init__(self, *args, **kwargs):
            raise PermissionError("sandbox: subprocess is disabled")

    subprocess.Popen = Popen
    _posixsubprocess.fork_exec = _refuser("_posixsubprocess.fork_exec")
    for name in list(sys.modules):
        if name.split(".")[0] in _BLOCKED_IMPORTS:
            del sys.modules[name]
    sys.meta_path.insert(0, _BlockImports(_BLOCKED_IMPORTS))

    # 2. No network: no socket objects, no name lookups.
    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            raise PermissionError("sandbox: network access is disabled")

    socket.socket = socket.SocketType = _socket.socket = _socket.SocketType = NoSocket
    for name in _NETWORK_FUNCTIONS:
        for module in (socket, _socket):
            if hasattr(module, name):
                setattr(module, name, _refuser(f"socket.{name}"))

    # 3. No writes outside the sandbox dir. Reading anywhere stays allowed (imports need it).
    real_open, real_os_open, real_readlink, real_getcwd = builtins.open, os.open, os.readlink, os.getcwd
    realpath, devnull = os.path.realpath, os.path.realpath(os.devnull)

    def where(path, dir_fd=None, follow=True) -> str:
        """The absolute, symlink-free path an operation would touch."""
        if isinstance(path, int):  # a file descriptor: ask the kernel what it is
            return real_readlink(f"/proc/self/fd/{path}")
        path = os.fsdecode(os.fspath(path))
        base = real_readlink(f"/proc/self/fd/{dir_fd}") if dir_fd is not None else real_getcwd()
        full = os.path.join(base, path)
        name = os.path.basename(full)
        if follow or name in ("", ".", ".."):
            return realpath(full)
        return os.path.join(realpath(os.path.dirname(full)), name)  # the link itself, not its target

    def check(path, what, dir_fd=None, follow=True) -> None:
        target = where(path, dir_fd, follow)
        if target == work or target.startswith(work + os.sep) or target == devnull:
            return
        shown = path if isinstance(path, int) else os.fsdecode(path)
        raise PermissionError(f"sandbox: {what} {shown} is outside the sandbox directory")

    def guarded_open(file, mode="r", *args, **kwargs):
        if not isinstance(file, int) and any(c in mode for c in "wax+"):
            check(file, "writing to")
        return real_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, mode=0o777, *, dir_fd=None):
        if flags & _OPEN_WRITE_FLAGS:
            check(path, "writing to", dir_fd)
        return real_os_open(path, flags, mode, dir_fd=dir_fd)

    class FileIO(_io.FileIO):  # io.FileIO("x", "w") opens files without going through open()
        def __init__(self, file, mode="r", *args, **kwargs):
            if not isinstance(file, int) and any(c in mode for c in "wax+"):
                check(file, "writing to")
            super().__init__(file, mode, *args, **kwargs)

    builtins.open = io.open = _io.open = guarded_open
    io.FileIO = _io.FileIO = FileIO
    os.open = posix.open = guarded_os_open

    def guard_paths(name, specs):
        real = getattr(os, name)

        @functools.wraps(real)
        def guarded(*args, **kwargs):
            follow_links = kwargs.get("follow_symlinks", True)
            for position, keyword, dir_fd_keyword, follow in specs:
                path = args[position] if len(args) > position else kwargs.get(keyword)
                if path is not None:
                    dir_fd = kwargs.get(dir_fd_keyword) if dir_fd_keyword else None
                    check(path, f"os.{name} on", dir_fd, follow and follow_links)
            return real(*args, **kwargs)
        return guarded

    for name, specs in _PATH_FUNCTIONS.items():
        if hasattr(os, name):
            guarded = guard_paths(name, specs)
            setattr(os, name, guarded)
            if hasattr(posix, name):
                setattr(posix, name, guarded)
    # os.makedirs, os.removedirs, os.renames, shutil.rmtree/move/copy* and pathlib all call the functions
    # above through the os module at call time, so they are covered without patching them one by one.


def _lock_filesystem(work: str) -> None:
    """Inside the new mount namespace (unshare --mount): bind the sandbox dir onto itself so that it is a
    mount of its own, remount every other mount read-only, then enter a nested user + mount namespace.
    The nested step matters: in the first namespace the program is root and could simply remount "/"
    writable again; mount flags inherited into a namespace owned by a less privileged user namespace
    are locked by the kernel. (Side effect: os.getuid() reports 65534, the unmapped id.)"""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    ms_rdonly, ms_remount, ms_bind = 1, 32, 4096
    keep = 2 | 4 | 8 | 1024 | 2048 | 4096  # nosuid, nodev, noexec, noatime, nodiratime, relatime: statvfs
    # reports them with the same bits; a remount must repeat the locked ones or the kernel says EPERM

    def mount(source, target, flags):
        if libc.mount(source, target.encode(), None, flags, None) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"sandbox: mount {target}: {os.strerror(err)}")

    mount(work.encode(), work, ms_bind)
    os.chdir(work)  # our cwd still points into the mount below; step onto the new one
    with open("/proc/self/mounts") as f:
        targets = [_unescape_mount(line.split()[1]) for line in f]
    for target in dict.fromkeys(targets):  # a path mounted twice (over-mounted) appears twice
        if target != work:
            mount(None, target, ms_remount | ms_bind | ms_rdonly | (os.statvfs(target).f_flag & keep))
    clone_newns, clone_newuser = 0x00020000, 0x10000000
    if libc.unshare(clone_newuser | clone_newns) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sandbox: nested unshare: {os.strerror(err)}")
    # the program cannot import ctypes (the guard blocks it); drop the copy we loaded
    for name in ("ctypes", "_ctypes"):
        sys.modules.pop(name, None)


def _unescape_mount(field: str) -> str:
    """/proc/self/mounts writes a space in a path as \\040 (octal escapes)."""
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _child_main(args: list[str]) -> None:
    program_path = args[-1]
    work = os.path.realpath(os.getcwd())
    with open(program_path, encoding="utf-8") as f:
        source = f.read()
    if "--lock-fs" in args:
        _lock_filesystem(work)
    if "--no-guard" not in args:
        _install_guard(work)
    # The program runs as __main__ in a fresh module (not in this bootstrap's namespace).
    main = types.ModuleType("__main__")
    main.__file__ = program_path
    main.__builtins__ = builtins
    sys.modules["__main__"] = main
    sys.argv = [program_path]
    try:
        exec(compile(source, program_path, "exec"), main.__dict__)
    except SystemExit as e:
        if e.code is None or e.code == 0:
            # An early exit(0) would skip the asserts that follow and still count as a pass.
            print("sandbox: the program called exit(0) before its last line; counted as a failure",
                  file=sys.stderr)
            raise SystemExit(1)
        raise
    except BaseException as e:  # noqa: BLE001 - report it the way Python would, minus this frame
        traceback.print_exception(type(e), e, e.__traceback__.tb_next)
        raise SystemExit(1)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--child":
    _child_main(sys.argv[2:])
