"""The sandbox's bootstrap and interpreter: `python -I -c "…child.main(ctl_in, ctl_out)"`.

Protocol, one JSON object per line. Server → child: the spec (first line), then
`{"op": "exec", "id", "code", "cpu_s"}`. Child → server: `{"type": "ready", "layers"}` once confined,
`{"type": "result", "id", "stdout", "stderr", "exit_code", "limit", "truncated"}` per call (the
call's id echoed; the server checks every field — user code runs in this process and can write
to the pipe too, so a forged or stale message gets the interpreter killed and replaced),
`{"type": "error", "message"}` if setup fails, and `{"type": "exit", "code", "signal", "cpu_s"}`
from the outer process once the interpreter is gone.

Two processes: the outer one (started by the server) lowers its uid, sets rlimits and unshares
the namespaces, then forks; the inner one is PID 1 of the new PID namespace, so killing it (or the
outer one: PR_SET_PDEATHSIG) kills every process the code started. The inner one mounts, drops
capabilities, sets no_new_privs, enforces Landlock and seccomp, and only then reads code.
"""
from __future__ import annotations

import ast
import builtins
import json
import os
import select
import signal
import sys
import traceback

from livecast.services.sandbox import capture, landlock, limits, namespaces, rootfs, seccomp


def _send(fd: int, message: dict) -> None:
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def _open_path(path: str) -> int:
    return os.open(path, os.O_PATH | os.O_CLOEXEC)


def _close_other_fds(keep: tuple[int, ...]) -> None:
    """Close every descriptor above 2 but `keep`, and keep those from any program the code starts:
    the server passes only the two control pipes, but nothing else may reach user code by mistake."""
    low = 3
    for fd in sorted(set(keep)):
        os.closerange(low, fd)
        os.set_inheritable(fd, False)
        low = fd + 1
    os.closerange(low, 1 << 20)




def _first_to_be_killed() -> None:
    """Rlimits bound each process, not a container's sum: if the host runs out of memory, the
    kernel's OOM killer should pick sandboxed code, never the server. Written while this process
    may still hold CAP_SYS_RESOURCE (a root server), it is also the floor the code cannot lower;
    every process the code starts inherits it."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(limits.OOM_SCORE_ADJ))
    except OSError:
        pass  # no /proc here: the rlimits still hold


def main(ctl_in: int, ctl_out: int) -> None:
    try:
        _close_other_fds((ctl_in, ctl_out))
        _first_to_be_killed()
        spec = json.loads(os.fdopen(os.dup(ctl_in), "rb").readline())
        layers = spec["layers"]
        # 0. into the container's cgroup first: every process of the container is born inside it
        for procs in spec["cgroup_procs"]:
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
        # 1. open every path the policy names while this process may still see it
        workdir_fd, scratch_fd = _open_path(spec["workdir"]), _open_path(spec["scratch"])
        rule_fds = [(_open_path(path), mask) for path, mask in spec["fs"]["rules"] if os.path.exists(path)]
        lim = limits.Limits(**spec["limits"])
        # 2. rlimits before the user namespace: RLIMIT_NPROC then also caps the outside count
        limits.apply_rlimits(lim)
        if os.geteuid() == 0:
            if "namespaces" in layers and spec["fs"]["overlays"]:
                namespaces.hide_directories(spec["fs"]["overlays"])
            namespaces.become(spec["uid"], spec["gid"])
        if "namespaces" in layers:
            namespaces.unshare(namespaces.ALL_NAMESPACES)
            namespaces.write_id_maps(spec["uid"], spec["gid"])
        alive_r, alive_w = os.pipe()
        pid = os.fork()
    except BaseException:
        _send(ctl_out, {"type": "error", "message": traceback.format_exc()})
        os._exit(1)
    if pid == 0:
        os.close(alive_w)
        try:
            _inner(spec, ctl_in, ctl_out, alive_r, workdir_fd, scratch_fd, rule_fds)
        except BaseException:
            _send(ctl_out, {"type": "error", "message": traceback.format_exc()})
        os._exit(1)
    _outer(pid, ctl_out, alive_r, [workdir_fd, scratch_fd, ctl_in] + [fd for fd, _ in rule_fds])


def _outer(pid: int, ctl_out: int, alive_r: int, fds: list[int]) -> None:
    """Wait for the inner process and report how it ended; hold nothing the code could use."""
    for fd in fds + [alive_r]:
        os.close(fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        namespaces.drop_capabilities()
    except OSError:
        pass  # without a user namespace there is nothing to drop but the rlimited uid's nothing
    _, status, usage = os.wait4(pid, 0)
    _send(ctl_out, {"type": "exit", "code": os.waitstatus_to_exitcode(status),
                    "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
                    "cpu_s": usage.ru_utime + usage.ru_stime})
    os._exit(0)


def _inner(spec, ctl_in, ctl_out, alive_r, workdir_fd, scratch_fd, rule_fds) -> None:
    layers = spec["layers"]
    # 3. die with the outer process; it may already be gone (the server killed it meanwhile)
    namespaces.prctl(namespaces.PR_SET_PDEATHSIG, signal.SIGKILL)
    if select.select([alive_r], [], [], 0)[0]:
        os._exit(1)
    os.close(alive_r)
    # 4. mounts: our own root (the policy's paths, /proc, /tmp, /mnt/data, nothing else of the host), or
    #    without it the host's tree with our own /proc and the workdir at /mnt/data
    if "root" in layers:
        namespaces.set_hostname("sandbox")
        tmp = rootfs.enter(spec["fs"]["binds"], spec["fs"]["links"], spec["workdir"], spec["scratch"])
        os.environ["TMPDIR"] = os.environ["MPLCONFIGDIR"] = tmp  # the scratch directory, bound there
        os.chdir(rootfs.MOUNT_POINT)
    elif "namespaces" in layers:
        namespaces.set_hostname("sandbox")
        namespaces.setup_mounts(spec["workdir"])
        os.chdir("/mnt/data")
    else:
        os.fchdir(workdir_fd)
    # 5. trusted imports, before Landlock holds (e.g. pyc caches outside the policy, without our own root)
    for module in spec["preload"]:
        __import__(module)
    # 6. nothing left to gain: capabilities, privileges, filesystem, syscalls — in that order
    namespaces.drop_capabilities()
    namespaces.prctl(namespaces.PR_SET_DUMPABLE, 0)
    namespaces.set_no_new_privs()
    rules = rule_fds + [(workdir_fd, landlock.READ_WRITE), (scratch_fd, landlock.READ_WRITE)]
    if "root" in layers:  # its own tree holds only what the policy allows: every folder may be listed
        rules.append((_open_path("/"), landlock.READ_DIR))
    if "landlock" in layers:
        landlock.restrict(rules, spec["landlock_abi"])
    if "seccomp" in layers:
        seccomp.install()
    for fd, _ in rules:
        os.close(fd)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    limits.install_cpu_handler()
    _send(ctl_out, {"type": "ready", "layers": layers})
    _serve(os.fdopen(ctl_in, "rb"), ctl_out, spec["output_limit_bytes"])


def _serve(requests, ctl_out: int, output_limit_bytes: int) -> None:
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    for line in requests:
        request = json.loads(line)
        limits.start_call(request["cpu_s"])
        with capture.CallCapture(output_limit_bytes) as cap:
            exit_code, limit = _execute(request["code"], namespace)
        stdout, stderr, truncated = cap.result()
        if truncated and limit is None:
            limit = limits.OUTPUT
        _send(ctl_out, {"type": "result", "id": request.get("id"), "stdout": stdout, "stderr": stderr, "exit_code": exit_code,
                        "limit": limit, "truncated": truncated})


def _execute(code: str, namespace: dict) -> tuple[int, str | None]:
    """Run `code` like a notebook cell: the value of a final expression is printed."""
    try:
        tree = ast.parse(code, "<code>", "exec")
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, "<code>", "exec"), namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), "<code>", "eval"), namespace)
            if value is not None:
                print(repr(value))
        return 0, None
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0, None
        print(exc.code, file=sys.stderr)
        return 1, None
    except BaseException as exc:  # noqa: BLE001 - everything the code raises is its result
        _print_traceback(exc)
        return 1, limits.classify(exc)


def _print_traceback(exc: BaseException) -> None:
    try:
        report = traceback.TracebackException.from_exception(exc)
        report.stack = traceback.StackSummary.from_list([f for f in report.stack if f.filename != __file__])
        sys.stderr.write("".join(report.format()))
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - e.g. MemoryError again while formatting
        os.write(2, f"{type(exc).__name__}: {exc}\n".encode(errors="replace"))
