"""Server side: one stateful container — a live, confined interpreter plus its working directory.

Blocking by design (pipes, waits, directory scans); `pool` calls it from worker threads. The
interpreter keeps variables and imports across `run` calls; if it dies (timeout, CPU, crash)
the next call starts a fresh one on the same files. Every wait is bounded by a deadline, and
a read from the child is bounded in size: the child is untrusted once it has said "ready".
"""
from __future__ import annotations

import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from livecast.services.sandbox import files as cfiles
from livecast.services.sandbox import cgroups, limits
from livecast.services.sandbox.files import ContainerFile, FileIndex

_PROJECT_ROOT = str(Path(__file__).resolve().parents[3])
_BOOT = ("import sys; sys.path.insert(0, {root!r}); from livecast.services.sandbox.child import main; "
         "sys.path.pop(0); main({ctl_in}, {ctl_out})")
_START_TIMEOUT_S = 60.0


class ProtocolError(ValueError):
    """The child sent something the protocol does not allow: it is killed and replaced."""


def pick_uid(uid_base: int) -> int:
    """A root server gives each container its own outside uid (random: no two servers on a host
    need to agree), so files, signals and process counts of two containers never mix."""
    return uid_base + secrets.randbelow(1 << 24) if os.geteuid() == 0 else os.getuid()


@dataclass(slots=True)
class ExecResult:
    stdout: str
    stderr: str
    exit_code: int
    timed_out: bool
    limit: str | None
    files: list[ContainerFile] = field(default_factory=list)
    images: list[ContainerFile] = field(default_factory=list)
    container_id: str = ""
    duration_ms: float = 0.0

    def to_json(self) -> dict:
        return {"container_id": self.container_id, "stdout": self.stdout, "stderr": self.stderr,
                "exit_code": self.exit_code, "timed_out": self.timed_out, "limit": self.limit,
                "files": [f.to_openai(self.container_id) for f in self.files],
                "images": [f.to_openai(self.container_id) for f in self.images],
                "duration_ms": round(self.duration_ms, 1)}


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    """Everything a container needs, copied from SandboxConfig by the pool."""
    limits: limits.Limits
    layers: tuple[str, ...]
    landlock_abi: int
    fs_policy: dict
    preload: tuple[str, ...]
    output_limit_bytes: int
    disk_limit_bytes: int
    cgroup: cgroups.Site | None = None  # each container's own cgroup under it, where the host allows one


class Container:
    def __init__(self, container_id: str, directory: Path, spec: ContainerSpec, uid: int) -> None:
        self.id, self.spec, self.uid = container_id, spec, uid
        self.directory = directory
        self.workdir, self.scratch = directory / "data", directory / "tmp"
        self.files = FileIndex()
        self.scratch_files = FileIndex()  # $TMPDIR, MPLCONFIGDIR: not listed, but counted against the disk limit
        self.created_at = self.last_active_at = time.time()
        self.process: subprocess.Popen | None = None
        self._calls = 0  # the id of the latest call, echoed by the child's result
        for path in (directory, self.workdir, self.scratch):
            path.mkdir(mode=0o700)
            if os.geteuid() == 0:
                os.chown(path, uid, uid)

    # ---- process lifecycle -------------------------------------------------------------
    def start(self) -> None:
        """Spawn the interpreter and wait until it is confined and ready (raises if it is not)."""
        ctl_in_r, ctl_in_w = os.pipe()
        ctl_out_r, ctl_out_w = os.pipe()
        boot = _BOOT.format(root=_PROJECT_ROOT, ctl_in=ctl_in_r, ctl_out=ctl_out_w)
        env = {"PATH": "/usr/bin:/bin", "HOME": cfiles.MOUNT_POINT, "LANG": "C.UTF-8", "TMPDIR": str(self.scratch),
               "MPLCONFIGDIR": str(self.scratch), "MPLBACKEND": "Agg", "OPENBLAS_NUM_THREADS": "1",
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        self.process = subprocess.Popen([sys.executable, "-I", "-c", boot], pass_fds=(ctl_in_r, ctl_out_w),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, env=env, cwd="/", start_new_session=True)
        os.close(ctl_in_r)
        os.close(ctl_out_w)
        self._to_child, self._from_child = ctl_in_w, ctl_out_r
        self._buffer = b""
        spec = {"uid": self.uid, "gid": self.uid, "workdir": str(self.workdir), "scratch": str(self.scratch),
                "limits": self.spec.limits.to_json(), "fs": self.spec.fs_policy, "layers": list(self.spec.layers),
                "landlock_abi": self.spec.landlock_abi, "preload": list(self.spec.preload),
                "output_limit_bytes": self.spec.output_limit_bytes,
                "cgroup_procs": self.spec.cgroup.create(self.id) if self.spec.cgroup else []}
        self._write(spec)
        try:
            message = self._read(time.monotonic() + _START_TIMEOUT_S)
        except ProtocolError as exc:
            message = {"type": "error", "message": str(exc)}
        if message is None or message.get("type") != "ready":
            detail = str((message or {}).get("message", "no answer"))[:4000]
            self.kill()
            raise RuntimeError(f"sandbox failed to start: {detail}")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL PID 1 of the container: the kernel kills every other process of its PID
        namespace before PID 1 is gone, the outer process reaps it (no zombie left to the host's
        init) and exits, and we reap that. If the outer process is stuck, SIGKILL it too:
        PR_SET_PDEATHSIG then takes PID 1 down the same way."""
        if self.process is None:
            return
        if "namespaces" in self.spec.layers:
            targets = _children(self.process.pid) or [self.process.pid]
        else:
            targets = self.pids()[::-1]  # no PID namespace (unsafe mode): the tree as it is now, leaves first
        for pid in targets:
            _sigkill(pid)
        try:
            self.process.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            _sigkill(self.process.pid)
            self.process.wait()
        for fd in (self._to_child, self._from_child):
            os.close(fd)
        self.process = None

    def close(self) -> None:
        """Kill every process, then remove the directory completely — or raise IncompleteRemoval
        (an OSError) naming what is left, so a caller never reports a half-done delete as done."""
        self.kill()
        if self.spec.cgroup:
            self.spec.cgroup.remove(self.id)
        cfiles.remove_tree(str(self.directory))

    def pids(self) -> list[int]:
        """Every live process of this container, found by walking /proc's children lists."""
        if self.process is None:
            return []
        found, todo = [], [self.process.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += _children(pid)
        return found

    # ---- protocol ------------------------------------------------------------------------
    def _write(self, message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(self._to_child, data):]

    def _read(self, deadline: float) -> dict | None:
        """The next message, or None at EOF or past the deadline. Raises ProtocolError for a line
        longer than two outputs plus slack, or one that is not a JSON object: the code can write
        to this pipe (it runs in the process that holds it), so nothing read here is trusted."""
        max_line = 8 * self.spec.output_limit_bytes + 65536
        while b"\n" not in self._buffer:
            timeout = deadline - time.monotonic()
            if timeout <= 0 or not select.select([self._from_child], [], [], timeout)[0]:
                return None
            chunk = os.read(self._from_child, 1 << 16)
            if not chunk:
                return None
            if len(self._buffer) + len(chunk) > max_line:
                raise ProtocolError(f"a message longer than {max_line} bytes")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            raise ProtocolError("a line that is not JSON") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ProtocolError(f"a {type(message).__name__} where an object with a type was expected")
        return message

    def _pending(self) -> bool:
        """Whether the child wrote something nobody asked for (it must be silent between calls)."""
        return bool(self._buffer) or bool(select.select([self._from_child], [], [], 0)[0])

    def _valid_result(self, message: dict, call_id: int) -> ExecResult:
        """A `result` message checked field by field, or ProtocolError."""
        max_text = self.spec.output_limit_bytes + 256  # the kept bytes plus the truncation note
        stdout, stderr, exit_code = message.get("stdout"), message.get("stderr"), message.get("exit_code")
        limit, truncated = message.get("limit"), message.get("truncated")
        if message.get("id") != call_id:
            raise ProtocolError(f"a result for call {message.get('id')!r} during call {call_id}")
        if not (isinstance(stdout, str) and isinstance(stderr, str) and len(stdout) <= max_text
                and len(stderr) <= max_text):
            raise ProtocolError("a result whose stdout or stderr is not bounded text")
        if type(exit_code) is not int or not -(1 << 31) <= exit_code < (1 << 31):
            raise ProtocolError("a result whose exit_code is not an integer")
        if not (limit is None or (isinstance(limit, str) and limit in limits.NAMES)) or type(truncated) is not bool:
            raise ProtocolError("a result with an unknown limit or truncation flag")
        return ExecResult(stdout, stderr, exit_code, False, limit)

    def _violation(self, exc: "ProtocolError") -> ExecResult:
        """The child broke the protocol (forged or malformed messages): kill and replace it."""
        self.kill()
        return ExecResult("", f"the interpreter was killed: it broke the sandbox's control protocol ({exc}); "
                              "the next call starts a fresh interpreter on the same files\n",
                          -signal.SIGKILL, False, limits.CRASH)

    # ---- calls ---------------------------------------------------------------------------
    def run(self, code: str, timeout_s: float, cpu_s: int | None = None) -> ExecResult:
        started = time.monotonic()
        self.last_active_at = time.time()
        if not self.alive:
            self.kill()
            self.start()
        cpu_s = min(cpu_s or self.spec.limits.cpu_s_per_call, self.spec.limits.cpu_s_total)
        self._calls += 1
        oom_kills = self._oom_kills()
        try:
            if self._pending():  # only the outer process's word that the interpreter died may come unasked
                early = self._read(time.monotonic() + 1.0)
                if early is not None and early["type"] != "exit":
                    raise ProtocolError(f"a {early['type']!r} message between calls")
                self.kill()
                self.start()
            request = {"op": "exec", "id": self._calls, "code": code, "cpu_s": cpu_s}
            try:
                self._write(request)
            except BrokenPipeError:  # the interpreter died just now, before saying so: replace it
                self.kill()
                self.start()
                self._write(request)
            message = self._read(started + timeout_s)
            if message is not None and message["type"] == "result":
                result = self._valid_result(message, self._calls)
            else:
                result = self._ended(message, timed_out=message is None and time.monotonic() >= started + timeout_s)
        except ProtocolError as exc:
            result = self._violation(exc)
        if self._oom_kills() > oom_kills and result.limit in (None, limits.CRASH):
            result.limit = limits.MEMORY
            result.stderr += f"the kernel killed a process of this container: all its processes together reached " \
                             f"the container's memory limit of {self.spec.limits.memory_mb} MiB (cgroup)\n"
        changed = self.files.sync(str(self.workdir))
        scratch_changed = self.scratch_files.sync(str(self.scratch))
        if self.files.total_bytes() + self.scratch_files.total_bytes() > self.spec.disk_limit_bytes:
            result = self._over_disk(result, changed, scratch_changed)
            changed = []
        if self.files.truncated:
            result.stderr += f"note: the listing of {cfiles.MOUNT_POINT} stopped early ({self.files.truncated}); " \
                             "files past that point are not listed\n"
        result.files, result.images = changed, [f for f in changed if f.is_image]
        result.container_id, result.duration_ms = self.id, (time.monotonic() - started) * 1000
        self.last_active_at = time.time()
        return result

    def _ended(self, message: dict | None, timed_out: bool) -> ExecResult:
        """The interpreter is gone (or is killed now, past the deadline): say why."""
        self.kill()
        if timed_out:
            return ExecResult("", "killed: wall-clock timeout\n", -signal.SIGKILL, True, limits.TIMEOUT)
        # the outer process reports the inner one's end just before it exits
        exit_message = message if message and message.get("type") == "exit" else {}
        signum, code, cpu_s = exit_message.get("signal"), exit_message.get("code"), exit_message.get("cpu_s")
        if exit_message and not (type(code) is int and -256 < code < 256 and (signum is None or (
                type(signum) is int and 0 < signum < 65)) and type(cpu_s) in (int, float)):
            raise ProtocolError("a malformed exit message")
        code = code if exit_message else -signal.SIGKILL
        if signum:
            limit = limits.classify_signal(signum, cpu_s, self.spec.limits.cpu_s_total)
            return ExecResult("", f"interpreter killed by signal {signum} ({limit})\n", code, False, limit)
        return ExecResult("", f"interpreter exited with code {code}\n", code, False, None)

    def _over_disk(self, result: ExecResult, changed: list[ContainerFile],
                   scratch_changed: list[ContainerFile]) -> ExecResult:
        """The working directory and the scratch directory ($TMPDIR) share one disk limit."""
        for directory, files in ((self.workdir, changed), (self.scratch, scratch_changed)):
            for file in files:
                try:
                    cfiles.unlink_beneath(str(directory), file.relpath)
                except OSError:
                    pass
        self.files.sync(str(self.workdir))
        self.scratch_files.sync(str(self.scratch))
        note = f"files written by this call removed: the container's disk limit of " \
               f"{self.spec.disk_limit_bytes >> 20} MiB was exceeded\n"
        return ExecResult(result.stdout, result.stderr + note, result.exit_code or 1, result.timed_out, limits.DISK)

    def _oom_kills(self) -> int:
        return self.spec.cgroup.oom_kills(self.id) if self.spec.cgroup else 0

    # ---- files ---------------------------------------------------------------------------
    def upload(self, name: str, data: bytes) -> ContainerFile:
        relpath = cfiles.check_name(name)
        if len(data) > self.spec.limits.max_file_mb << 20:
            raise ValueError(f"file is larger than the container's file size limit of {self.spec.limits.max_file_mb} MiB")
        cfiles.write_beneath(str(self.workdir), relpath, data, self.uid, self.uid)
        st = os.lstat(self.workdir / relpath)
        self.last_active_at = time.time()
        return self.files.record(relpath, st.st_size, st.st_mtime_ns, "user")

    def list_files(self) -> list[ContainerFile]:
        self.files.sync(str(self.workdir))
        return sorted(self.files.by_path.values(), key=lambda f: (f.created_at, f.relpath))

    def read(self, file: ContainerFile) -> bytes:
        return cfiles.read_beneath(str(self.workdir), file.relpath, self.spec.limits.max_file_mb << 20)

    def delete_file(self, file: ContainerFile) -> None:
        cfiles.unlink_beneath(str(self.workdir), file.relpath)
        self.files.by_path.pop(file.relpath, None)


def _children(pid: int) -> list[int]:
    children = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += [int(child) for child in f.read().split()]
    except OSError:
        pass  # gone meanwhile
    return children


def _sigkill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
