"""Escape attempts from model-written code, each contained, each naming what stopped it.

Where a test must prove a particular layer (rather than that *something* stopped the attempt)
it targets something the other layers would allow: a world-readable file for Landlock (plain
permissions would let any uid read it), ptrace(TRACEME) and unshare(NEWUSER) for seccomp (any
unprivileged process may call them), UDP for the network namespace (Landlock only rules TCP), a
0777 pathname unix socket for seccomp's socket families (neither Landlock nor the network
namespace covers those).
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from livecast.services.sandbox import limits, seccomp
from livecast.services.sandbox.rootfs import scratch_point


def _need(support, layer: str) -> None:
    if layer not in support.layers:
        pytest.skip(f"this kernel lacks {layer} (see test_probe)")


@pytest.fixture(scope="module")
def shared(spec, sandbox_root):
    """One container for the attempts that leave it alive (a fresh start costs ~0.3 s)."""
    from livecast.services.sandbox.container import Container, pick_uid
    from livecast.services.sandbox.config import SandboxConfig
    container = Container("cntr_shared", sandbox_root / "shared", spec, pick_uid(SandboxConfig().uid_base))
    container.start()
    yield container
    container.close()


def run(container, code: str, timeout_s: float = 20.0):
    return container.run(textwrap.dedent(code), timeout_s)


@pytest.fixture
def world_readable_secret():
    """A file any uid could read by its permissions: only Landlock keeps it from the sandbox."""
    data_dir = Path(tempfile.mkdtemp(prefix="livecast-server-data-"))
    data_dir.chmod(0o755)
    secret = data_dir / "secret.txt"
    secret.write_text("SERVER-SECRET-42")
    secret.chmod(0o644)
    yield secret
    secret.unlink()
    data_dir.rmdir()


def test_server_data_dir_is_not_in_the_sandbox(shared, support, world_readable_secret):
    """A world-readable file of the server: plain permissions would let any uid read it. The
    sandbox's own root does not hold it at all; without that root Landlock refuses it (EACCES)."""
    _need(support, "landlock")
    result = run(shared, f"""
        import os
        for attempt in (lambda: open({str(world_readable_secret)!r}).read(),
                        lambda: os.listdir({str(world_readable_secret.parent)!r})):
            try:
                print(attempt())
            except OSError as exc:
                print(type(exc).__name__, exc.errno)""")
    assert "SERVER-SECRET-42" not in result.stdout + result.stderr
    expected = "FileNotFoundError 2" if "root" in support.layers else "PermissionError 13"
    assert result.stdout.splitlines() == [expected] * 2, result.stdout + result.stderr


def test_landlock_denies_what_the_root_holds_beyond_the_policy(shared, support):
    """Files that are in the sandbox's tree and that plain permissions let it read and write (its
    own /proc entries): only Landlock refuses them (EACCES). Folders may be listed."""
    _need(support, "landlock")
    result = run(shared, """
        import os
        for path, mode in (('/proc/self/status', 'r'), ('/proc/1/environ', 'rb'), ('/proc/self/comm', 'w')):
            try:
                open(path, mode)
                print(path, 'OPENED')
            except OSError as exc:
                print(path, type(exc).__name__, exc.errno)
        print('1' in os.listdir('/proc'))""")
    assert result.stdout.splitlines() == ["/proc/self/status PermissionError 13", "/proc/1/environ PermissionError 13",
                                          "/proc/self/comm PermissionError 13", "True"], result.stdout + result.stderr


def test_home_directory_is_hidden(shared, support):
    _need(support, "namespaces")
    home = Path.home()
    with tempfile.NamedTemporaryFile("w", dir=home, prefix=".livecast-test-", suffix=".txt") as secret:
        secret.write("HOME-SECRET-7")
        secret.flush()
        os.chmod(secret.name, 0o644)
        result = run(shared, f"open({secret.name!r}).read()")
    assert "HOME-SECRET-7" not in result.stdout
    # /root is a 0700 directory: under root a tmpfs covers it (mount namespace), so the file is not there
    assert "FileNotFoundError" in result.stderr or "PermissionError" in result.stderr, result.stderr


def test_proc_and_the_parents_environment(shared, support):
    _need(support, "namespaces")
    os.environ["LIVECAST_TEST_API_KEY"] = "sk-not-for-the-sandbox"
    try:
        result = run(shared, f"""
            import os
            print(os.getpid(), os.getppid(), sorted(k for k in os.environ if 'KEY' in k or 'SECRET' in k))
            for path in ('/proc/1/environ', '/proc/{os.getpid()}/environ', '/proc/self/environ'):
                try:
                    print(path, open(path, 'rb').read()[:200])
                except OSError as exc:
                    print(path, type(exc).__name__, exc.errno)""")
    finally:
        del os.environ["LIVECAST_TEST_API_KEY"]
    assert "sk-not-for-the-sandbox" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0] == "1 0 []"  # PID namespace: the interpreter is PID 1, no parent visible; empty environment
    for line in lines[1:]:
        assert "PermissionError 13" in line or "FileNotFoundError" in line, line  # Landlock keeps /proc out


def test_writing_outside_the_working_directory(shared, support):
    _need(support, "landlock")
    target_dir = Path(tempfile.mkdtemp(prefix="livecast-open-dir-"))
    target_dir.chmod(0o777)  # anyone may write here by permissions
    scratch = scratch_point([p for p in shared.spec.fs_policy["binds"] if os.path.exists(p)]) + "/scratch.txt"
    try:
        result = run(shared, f"""
            import os
            for path in ({str(target_dir / 'x')!r}, '/mnt/escape', '../escape', '/usr/escape', {scratch!r}):
                try:
                    open(path, 'w').write('escaped')
                    print(path, 'WRITTEN')
                except OSError as exc:
                    print(path, type(exc).__name__, exc.errno)
            open('inside.txt', 'w').write('fine')""")
        assert not (target_dir / "x").exists() and not Path("/tmp/scratch.txt").exists()
        assert [f.path for f in result.files] == ["/mnt/data/inside.txt"]
        lines = result.stdout.splitlines()
        if "root" in support.layers:  # the host's folder is not there; the root's own tmpfs is read-only
            assert lines[:5] == [f"{target_dir / 'x'} FileNotFoundError 2", "/mnt/escape OSError 30",
                                 "../escape OSError 30", "/usr/escape OSError 30",
                                 f"{scratch} WRITTEN"], lines  # the container's own scratch directory
            assert (shared.scratch / "scratch.txt").read_text() == "escaped"
            run(shared, f"import os; os.remove({scratch!r})")
        else:  # Landlock
            assert lines[0] == f"{target_dir / 'x'} PermissionError 13" and "WRITTEN" not in result.stdout, lines
    finally:
        for leftover in target_dir.iterdir():
            leftover.unlink()
        target_dir.rmdir()


def test_network_is_unreachable(shared, support):
    _need(support, "namespaces")
    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp.settimeout(0.2)
    udp.settimeout(0.2)
    try:
        result = run(shared, f"""
            import socket
            try:
                socket.create_connection(('127.0.0.1', {tcp.getsockname()[1]}), timeout=2)
                print('tcp CONNECTED')
            except OSError as exc:
                print('tcp', type(exc).__name__, exc.errno)
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.sendto(b'hello', ('127.0.0.1', {udp.getsockname()[1]}))
                print('udp SENT')
            except OSError as exc:
                print('udp', type(exc).__name__, exc.errno)
            for host in ('example.com', 'localhost'):
                try:
                    print(host, socket.getaddrinfo(host, 80))
                except socket.gaierror as exc:
                    print(host, 'gaierror')""")
        with pytest.raises(TimeoutError):
            tcp.accept()
        with pytest.raises(TimeoutError):
            udp.recvfrom(16)
    finally:
        tcp.close()
        udp.close()
    out = result.stdout.splitlines()
    # TCP: Landlock's network rules (ABI >= 4) deny connect with EACCES before routing (else ENETUNREACH)
    assert out[0] in ("tcp PermissionError 13", "tcp OSError 101"), out
    assert out[1] == "udp OSError 101", out  # network namespace: its loopback is down, ENETUNREACH
    assert out[2:] == ["example.com gaierror", "localhost gaierror"], out  # no resolver, no /etc/hosts


def test_fork_bomb_hits_the_process_limit(make_container):
    container = make_container()
    result = run(container, """
        import os, time
        while True:
            if os.fork() == 0:
                time.sleep(60)
                os._exit(0)""")
    assert result.limit == limits.NPROC, result.stderr  # RLIMIT_NPROC: fork fails with EAGAIN
    assert "BlockingIOError" in result.stderr
    assert 30 <= len(container.pids()) <= 40  # 32 processes of the uid, plus the outer bootstrap
    assert run(container, "1 + 1").stdout == "2\n"  # the interpreter survives


def test_allocating_8_gib_hits_the_memory_limit(shared):
    result = run(shared, "big = bytearray(8 << 30)")
    assert result.limit == limits.MEMORY and "MemoryError" in result.stderr  # RLIMIT_AS
    assert run(shared, "'still here'").stdout == "'still here'\n"


def test_busy_loop_hits_the_cpu_limit_and_keeps_state(make_container):
    container = make_container()
    run(container, "kept = 'state'")
    result = run(container, "while True: pass")
    assert result.limit == limits.CPU and not result.timed_out  # RLIMIT_CPU soft: SIGXCPU → exception
    assert "CpuLimitExceeded" in result.stderr
    assert run(container, "kept").stdout == "'state'\n"


def test_sleeping_past_the_wall_clock_kills_the_whole_tree(make_container):
    container = make_container()
    result = run(container, """
        import os, time
        if os.fork() == 0:
            time.sleep(60)
        time.sleep(60)""", timeout_s=1.0)
    tree = container.pids()
    assert result.timed_out and result.limit == limits.TIMEOUT
    assert tree == [] and container.process is None  # killed and reaped, the forked child too
    assert run(container, "'restarted'").stdout == "'restarted'\n"  # next call: a fresh interpreter


def test_printing_100_mb_is_truncated(shared):
    result = run(shared, """
        import sys, os
        for _ in range(100):
            sys.stdout.write('x' * (1 << 20))
        _ = os.write(2, b'e' * (1 << 20))""")
    assert result.limit == limits.OUTPUT and result.exit_code == 0
    assert result.stdout.startswith("x" * 1000) and len(result.stdout) < 64 * 1024 + 200
    assert f"{100 * (1 << 20) - 64 * 1024} more bytes" in result.stdout
    assert len(result.stderr) < 64 * 1024 + 200


def test_writing_a_2_gib_file_hits_the_file_size_limit(shared):
    result = run(shared, """
        with open('big.bin', 'wb') as f:
            for _ in range(2048):
                f.write(bytes(1 << 20))""")
    assert result.limit == limits.FSIZE and "File too large" in result.stderr  # RLIMIT_FSIZE: EFBIG
    sizes = {f.relpath: f.bytes for f in result.files}
    assert sizes["big.bin"] <= 64 << 20
    run(shared, "import os; os.remove('big.bin')")


def test_signalling_the_parent(shared, support):
    _need(support, "namespaces")
    result = run(shared, f"""
        import os, signal
        for pid in ({os.getpid()}, {os.getppid()}):
            try:
                os.kill(pid, signal.SIGKILL)
                print(pid, 'SIGNALLED')
            except OSError as exc:
                print(pid, type(exc).__name__)""")
    assert "SIGNALLED" not in result.stdout
    assert result.stdout.count("ProcessLookupError") == 2  # PID namespace: no such process in here


def test_ptrace_and_mount_are_denied_by_seccomp(shared, support):
    _need(support, "seccomp")
    result = run(shared, """
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        def call(name, *args):
            ret = getattr(libc, name)(*args)
            print(name, ret, os.strerror(ctypes.get_errno()) if ret == -1 else '')
        call('ptrace', 0, 0, None, None)                          # PTRACE_TRACEME: allowed to anyone
        call('unshare', 0x10000000)                               # CLONE_NEWUSER: allowed unprivileged
        call('mount', b'none', b'/mnt/data', b'tmpfs', 0, None)
        call('umount2', b'/mnt/data', 0)
        call('syscall', 321, 0, None, 0)                          # bpf
        call('syscall', 298, None, 0, -1, -1, 0)                  # perf_event_open""")
    lines = result.stdout.splitlines()
    assert len(lines) == 6
    for line in lines:
        assert line.endswith("-1 Operation not permitted"), line  # seccomp: EPERM


@pytest.fixture(params=[socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["stream", "dgram"])
def socket_kind(request):
    return request.param


def _listen(path: Path, kind: int) -> socket.socket:
    """A root service's pathname unix socket, 0777: permissions let any uid connect, Landlock does
    not rule unix connect, and the socket is in no network namespace."""
    server = socket.socket(socket.AF_UNIX, kind)
    server.bind(str(path))
    path.chmod(0o777)
    if kind == socket.SOCK_STREAM:
        server.listen(1)
    server.settimeout(0.5)
    return server


@pytest.fixture
def host_unix_socket(socket_kind):
    """The service's socket in a 0777 folder of the host."""
    folder = Path(tempfile.mkdtemp(prefix="livecast-host-sock-"))
    folder.chmod(0o777)
    server = _listen(folder / "u.sock", socket_kind)
    yield server, str(folder / "u.sock")
    server.close()
    (folder / "u.sock").unlink()
    folder.rmdir()


# both ways to a pathname socket: a socket of one's own, or one end of a socketpair (a unix
# datagram end may connect() or sendto() elsewhere though paired; a stream end may not)
_UNIX_ATTACK = """
import socket
for how in ('socket', 'socketpair'):
    try:
        if how == 'socket':
            s = socket.socket(socket.AF_UNIX, {kind})
        else:
            s, _ = socket.socketpair(socket.AF_UNIX, {kind})
        s.settimeout(2)
        s.connect({path!r})
        s.send(b'escaped')
        print(how, 'CONNECTED')
    except OSError as exc:
        print(how, type(exc).__name__, exc.errno)
"""


def _contained(kind: int, path_exists: bool) -> list[str]:
    """What the attack prints once seccomp holds: socket(AF_UNIX) → EPERM; a stream pair is allowed
    but stays connected to itself (connect → EISCONN, or ENOENT first where the sandbox's root
    does not hold the path); a datagram pair is refused (EPERM)."""
    stream_pair = "socketpair OSError 106" if path_exists else "socketpair FileNotFoundError 2"
    return ["socket PermissionError 1",
            stream_pair if kind == socket.SOCK_STREAM else "socketpair PermissionError 1"]


def _reached(server) -> bool:
    """Whether anything came in: a connection on a stream listener, a datagram on a datagram socket."""
    try:
        if server.type == socket.SOCK_STREAM:
            server.accept()[0].close()
        else:
            server.recv(64)
        return True
    except TimeoutError:
        return False


def test_host_unix_socket_is_unreachable(shared, support, socket_kind):
    """The socket lies where the sandbox sees it (its own working directory, /mnt/data): only
    seccomp stops the connect."""
    _need(support, "seccomp")
    server = _listen(shared.workdir / "u.sock", socket_kind)
    try:
        result = run(shared, _UNIX_ATTACK.format(kind=int(socket_kind), path="/mnt/data/u.sock"))
        assert not _reached(server), result.stdout
        assert result.stdout.splitlines() == _contained(socket_kind, path_exists=True), result.stdout
    finally:
        server.close()
        (shared.workdir / "u.sock").unlink()


def test_cli_sandbox_cannot_reach_a_host_unix_socket(support, host_unix_socket):
    """The attack through `livecast sandbox run`, which builds its own container, on a host folder."""
    _need(support, "seccomp")
    if support.missing_required:
        pytest.skip("the CLI refuses to run without every layer (see test_probe)")
    server, path = host_unix_socket
    done = subprocess.run([sys.executable, "-m", "livecast.services.sandbox.cli", "run", "-"],
                          input=_UNIX_ATTACK.format(kind=int(server.type), path=path),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert not _reached(server), out
    assert out["stdout"].splitlines() == _contained(server.type, "root" not in support.layers), out


def test_socket_families_are_limited_by_seccomp(shared, support):
    _need(support, "seccomp")
    result = run(shared, """
        import multiprocessing, socket
        for family, kind in (('AF_UNIX', 'SOCK_STREAM'), ('AF_VSOCK', 'SOCK_STREAM'), ('AF_NETLINK', 'SOCK_RAW'),
                             ('AF_ALG', 'SOCK_SEQPACKET'), ('AF_PACKET', 'SOCK_DGRAM'),
                             ('AF_INET', 'SOCK_STREAM'), ('AF_INET6', 'SOCK_DGRAM')):
            try:
                socket.socket(getattr(socket, family), getattr(socket, kind)).close()
                print(family, 'created')
            except OSError as exc:
                print(family, type(exc).__name__, exc.errno)
        a, b = socket.socketpair()
        a.sendall(b'pair')
        print('socketpair', b.recv(8).decode())
        left, right = multiprocessing.Pipe()
        left.send({'pipe': 1})
        print('Pipe', right.recv())""")
    assert result.stdout.splitlines() == [
        "AF_UNIX PermissionError 1", "AF_VSOCK PermissionError 1", "AF_NETLINK PermissionError 1",
        "AF_ALG PermissionError 1", "AF_PACKET PermissionError 1",
        "AF_INET created", "AF_INET6 created",  # they reach only the empty network namespace
        "socketpair pair", "Pipe {'pipe': 1}"], result.stdout + result.stderr


def _verdict(program: bytes, nr: int, *args: int, arch: int = 0xC000003E) -> int:
    """Run the filter on one syscall, as the kernel would (the few BPF instructions it uses)."""
    data = struct.pack("<iIQ6Q", nr, arch, 0, *(list(args) + [0] * (6 - len(args))))
    insns = [struct.unpack("HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    pc, acc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x06:  # RET K
            return k
        if code == 0x20:  # LD W ABS
            acc = struct.unpack_from("<I", data, k)[0]
            pc += 1
        elif code == 0x54:  # ALU AND K
            acc &= k
            pc += 1
        else:
            taken = {0x15: acc == k, 0x35: acc >= k, 0x45: bool(acc & k)}[code]
            pc += 1 + (jt if taken else jf)


def test_seccomp_program_decisions():
    """Every path through the hand-assembled jumps, without a kernel: the verdict of each call."""
    program = seccomp.build_program()
    allow, eperm, enosys, kill = 0x7FFF0000, 0x00050001, 0x00050026, 0x80000000
    assert len(program) % 8 == 0 and len(program) // 8 == 5 + len(seccomp.DENIED_SYSCALLS) + 1 + 3 + 4 + 7 + 3
    tail = [program[i:i + 8] for i in range(len(program) - 24, len(program), 8)]
    assert tail == [struct.pack("HBBI", 0x06, 0, 0, k) for k in (allow, eperm, enosys)]  # RET K
    socket_nr, socketpair_nr, clone, clone3 = 41, 53, 56, 435
    cloexec = 0x80000
    cases = {
        (0,): allow, (1, 1): allow, (socket_nr + 1,): allow,  # read, write, connect
        (101,): eperm, (321,): eperm, (272, 0x10000000): eperm,  # ptrace, bpf, unshare
        (clone3,): enosys, (clone, 0x11): allow, (clone, 0x10000000 | 0x11): eperm,
        (socket_nr, 2, 1): allow, (socket_nr, 10, 2 | cloexec): allow,  # AF_INET, AF_INET6
        (socket_nr, 1, 1): eperm, (socket_nr, 16, 3): eperm, (socket_nr, 17, 3): eperm,  # UNIX, NETLINK, PACKET
        (socket_nr, 38, 5): eperm, (socket_nr, 40, 1): eperm, (socket_nr, 2 | (1 << 32), 1): allow,  # ALG, VSOCK
        (socketpair_nr, 1, 1 | cloexec): allow, (socketpair_nr, 1, 5): allow,  # stream, seqpacket
        (socketpair_nr, 1, 2): eperm, (socketpair_nr, 1, 2 | cloexec): eperm,  # dgram pairs can be re-pointed
        (socketpair_nr, 30, 1): eperm,  # not AF_UNIX (TIPC)
        (0x40000000 | 41, 1, 1): eperm,  # x32
    }
    for (nr, *args), expected in cases.items():
        assert _verdict(program, nr, *args) == expected, (nr, args)
    assert _verdict(program, 0, arch=0x40000003) == kill  # i386


_FORGE = """
import fcntl, os, stat
for fd in range(3, 64):  # the write-only pipe that is not stdout or stderr: the control pipe
    try:
        if fd > 2 and stat.S_ISFIFO(os.fstat(fd).st_mode) and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY:
            os.write(fd, PAYLOAD)
    except OSError:
        pass
"""
_FAKE_RESULT = {"type": "result", "stdout": "forged\n", "stderr": "", "exit_code": 0, "limit": None,
                "truncated": False}


@pytest.mark.parametrize("payload", [
    b"[]\n",  # valid JSON, not an object: was AttributeError "'list' object has no attribute 'get'"
    b"not json\n",
    json.dumps({"type": "result"}).encode() + b"\n",  # fields missing
    json.dumps({**_FAKE_RESULT, "id": 99}).encode() + b"\n",  # another call's result
    json.dumps({**_FAKE_RESULT, "exit_code": "0", "id": 1}).encode() + b"\n",  # a field of the wrong type
    json.dumps({"type": "exit", "code": [], "signal": "x", "cpu_s": None}).encode() + b"\n",
], ids=["list", "not-json", "missing-fields", "wrong-id", "wrong-type", "bad-exit"])
def test_forged_control_messages_kill_and_replace_the_interpreter(make_container, payload):
    """Finding 11: the code can find its write-only control pipe and forge messages; the server
    crashed (AttributeError) or handed the next call the previous call's result."""
    container = make_container()
    assert run(container, "x = 1").exit_code == 0
    forged = run(container, "PAYLOAD = " + repr(payload) + _FORGE + "import time; time.sleep(0.3)")
    assert forged.limit == limits.CRASH and "control protocol" in forged.stderr, forged
    assert forged.stdout == "" and not container.alive  # killed, not trusted
    after = run(container, "print('fresh', 'x' in dir())")
    assert after.exit_code == 0 and after.stdout == "fresh False\n", after  # a new interpreter, same files


def test_a_forged_result_never_answers_a_later_call(make_container):
    """A forged result carrying the right call id fools only its own call; the real one, arriving
    after it, is out of turn: the next call gets a clear error, never the previous result."""
    container = make_container()
    code = ("import json, sys\n"
            "frame = sys._getframe()\n"
            "while 'request' not in frame.f_locals:\n    frame = frame.f_back\n"
            "call = frame.f_locals['request']\n"
            "PAYLOAD = (json.dumps({**" + repr(_FAKE_RESULT) + ", 'id': call['id']}) + '\\n').encode()\n"
            + _FORGE + "import time; time.sleep(0.3)\nprint('real')")
    fooled = run(container, code)
    assert fooled.stdout == "forged\n"  # it fooled itself, as documented
    time.sleep(0.5)
    following = run(container, "print('second')")
    assert following.stdout != "real\n" and following.limit == limits.CRASH, following
    assert run(container, "print('third')").stdout == "third\n"


def test_cli_survives_a_forged_control_message():
    done = subprocess.run([sys.executable, "-m", "livecast.services.sandbox.cli", "run", "-"],
                          input="PAYLOAD = b'[]\\n'" + _FORGE, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["limit"] == "crash" and "control protocol" in out["stderr"]


def test_control_pipes_are_not_inherited_by_programs_the_code_starts(shared):
    """Only 0, 1 and 2 reach a program the code execs; the control pipes are close-on-exec."""
    result = run(shared, """
        import os
        def inheritable(fd):
            try:
                return os.get_inheritable(fd)
            except OSError:
                return False
        print([fd for fd in range(3, 256) if inheritable(fd)])
    """)
    assert result.stdout == "[]\n", result


def test_tmpdir_counts_against_the_disk_limit(spec, sandbox_root):
    """Finding 4: $TMPDIR (the scratch directory, outside /mnt/data) had no disk limit: 6 × 240 MiB
    written there persisted across calls. Here 6 × 1 MiB against a 4 MiB limit."""
    from livecast.services.sandbox.container import Container, pick_uid
    from livecast.services.sandbox.config import SandboxConfig
    small = dataclasses.replace(spec, disk_limit_bytes=4 << 20)
    container = Container("cntr_tmpdir", sandbox_root / "tmpdir", small, pick_uid(SandboxConfig().uid_base))
    container.start()
    try:
        assert run(container, "import os; os.environ['TMPDIR'] != '/mnt/data'").stdout == "True\n"
        filled = run(container, """
            import os, tempfile
            for i in range(6):
                with open(os.path.join(tempfile.gettempdir(), f'fill{i}'), 'wb') as f:
                    f.write(b'x' * (1 << 20))
        """)
        assert filled.limit == limits.DISK and "disk limit" in filled.stderr, filled
        left = run(container, "import os, tempfile; sorted(n for n in os.listdir(tempfile.gettempdir()) if n.startswith('fill'))")
        assert left.stdout == "[]\n", left
        assert run(container, "print('ok')").limit is None  # within the limit again
    finally:
        container.close()


@pytest.fixture
def host_symlink():
    folder = Path(tempfile.mkdtemp(prefix="livecast-host-link-"))
    folder.chmod(0o755)
    (folder / "link").symlink_to("/etc/shadow")
    yield folder / "link"
    (folder / "link").unlink()
    folder.rmdir()


def test_host_paths_do_not_exist_in_the_sandbox(shared, support, host_symlink):
    """Finding 12: Landlock rules opening, listing and writing, not path lookup, so stat, readlink
    and access on host paths used to answer (/etc/shadow's size and times, where a symlink points).
    In the sandbox's own root they do not exist; its top level holds only the policy's paths."""
    if "root" not in support.layers:
        pytest.skip(f"no own root here: {support.detail['root']}")
    names = ("/etc/shadow", "/etc/passwd", "/etc/hostname", str(host_symlink), str(host_symlink.parent), "/root/.bashrc",
             "/sys", "/var")
    result = run(shared, f"""
        import os
        for name in {names!r}:
            for call in (os.stat, os.lstat, os.readlink, os.listxattr):
                try:
                    call(name)
                    print(name, call.__name__, 'ANSWERED')
                except OSError as exc:
                    print(name, call.__name__, type(exc).__name__)
            print(name, 'access', os.access(name, os.F_OK))
        print(sorted(os.listdir('/')))
        print(sorted(os.listdir('/etc')), sorted(os.listdir('/dev')))""")
    lines = result.stdout.splitlines()
    assert "ANSWERED" not in result.stdout and "True" not in "".join(lines[:-2]), result.stdout + result.stderr
    assert len([line for line in lines if "FileNotFoundError" in line]) == 4 * len(names)
    policy = shared.spec.fs_policy
    scratch = scratch_point([p for p in policy["binds"] if os.path.exists(p)])  # /tmp unless a bound path is under it
    tops = {path.split("/")[1] for path in policy["binds"] + list(policy["links"])} | {"proc", scratch.split("/")[1], "mnt"}
    assert lines[-2] == str(sorted(tops)), lines[-2]
    assert lines[-1] == "['ld.so.cache', 'localtime'] ['null', 'urandom', 'zero']", lines[-1]


def test_without_its_own_root_the_sandbox_keeps_the_hosts_tree(spec, sandbox_root, support):
    """The fallback where the probe finds no pivot_root: the layers before it, as they were."""
    _need(support, "landlock")
    from livecast.services.sandbox.container import Container, pick_uid
    from livecast.services.sandbox.config import SandboxConfig
    host_tree = dataclasses.replace(spec, layers=tuple(layer for layer in spec.layers if layer != "root"))
    container = Container("cntr_host_tree", sandbox_root / "host_tree", host_tree, pick_uid(SandboxConfig().uid_base))
    container.start()
    try:
        result = run(container, """
            import os, numpy
            print(os.stat('/etc/shadow').st_size > 0, os.getcwd())
            try:
                open('/etc/shadow')
            except OSError as exc:
                print(exc.errno)""")
        assert result.stdout == "True /mnt/data\n13\n", result  # metadata answers, contents do not (Landlock)
    finally:
        container.close()


def test_numpy_and_matplotlib_work_in_the_sandboxs_root(shared):
    """What the sandbox advertises (SandboxConfig.packages) still imports, reads its data files,
    writes through $TMPDIR (/tmp, or /.tmp where the interpreter lives under /tmp) and into /mnt/data."""
    result = run(shared, """
        import os, tempfile, numpy as np, matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        plt.plot(np.arange(4) ** 2)
        plt.savefig('plot.png')
        print(tempfile.gettempdir(), os.getcwd(), os.path.getsize('plot.png') > 1000, round(float(np.linalg.norm([3, 4]))))""",
        timeout_s=60.0)
    scratch = scratch_point([p for p in shared.spec.fs_policy["binds"] if os.path.exists(p)])
    assert result.stdout == f"{scratch} /mnt/data True 5\n", result.stdout + result.stderr
    assert [f.path for f in result.files] == ["/mnt/data/plot.png"]
    run(shared, "import os; os.remove('plot.png')")


def test_sandboxed_processes_are_the_oom_killers_first_choice(shared):
    """Finding 7: memory is bounded per process, not per container; under host memory pressure
    the kernel must kill sandboxed code before the server."""
    run(shared, "import os\nif os.fork() == 0:\n    import time; time.sleep(30)\n")
    pids = shared.pids()
    assert len(pids) >= 3  # outer bootstrap, interpreter, the code's own child
    scores = {pid: open(f"/proc/{pid}/oom_score_adj").read().strip() for pid in pids}
    assert set(scores.values()) == {"1000"}, scores
    assert int(open("/proc/self/oom_score_adj").read()) < 1000
    lowered = run(shared, "open('/proc/self/oom_score_adj', 'w').write('-1000')")
    assert lowered.exit_code == 1 and "Error" in lowered.stderr
    shared.kill()  # the sleeper goes with the interpreter; the next call starts a fresh one


def test_an_interpreter_that_died_between_calls_is_replaced_without_an_error(make_container):
    """The outer process's `exit` message is the one thing allowed between calls: a background
    thread that kills the interpreter after its call must not look like a protocol violation."""
    container = make_container()
    run(container, "import os, threading, time\nthreading.Thread(target=lambda: (time.sleep(0.1), os._exit(3))).start()")
    time.sleep(0.5)
    again = run(container, "print('fresh')")
    assert again.stdout == "fresh\n" and again.limit is None, again
