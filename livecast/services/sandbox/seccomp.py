"""A seccomp-BPF deny list, assembled here with struct (no libseccomp): the syscalls model-written
Python never needs and that widen the kernel surface or reach outside the sandbox.

Denied calls fail with EPERM (so the code sees a PermissionError naming the call rather than a
dead interpreter); clone3 fails with ENOSYS so glibc falls back to clone, whose flags a BPF
filter can read, and clone with any CLONE_NEW* flag is denied. socket() is allowed for AF_INET
and AF_INET6 only, which reach nothing but the sandbox's empty network namespace: every other
family fails with EPERM — AF_UNIX because a pathname socket (a root daemon's, in a 0777
directory) is reached through the filesystem, which neither Landlock nor the network namespace
rules; AF_VSOCK because its port space is the host's; netlink, packet, AF_ALG and the rest for
their kernel surface. socketpair() is allowed for AF_UNIX stream and seqpacket pairs (Python's
multiprocessing.Pipe, asyncio): those stay connected to each other. A datagram pair is denied,
since either end may connect() or sendto() a pathname socket. Another architecture kills the
process; the x32 ABI on x86-64 fails with EPERM: the table below holds x86-64 numbers only.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct

# x86-64 syscall numbers (asm/unistd_64.h)
DENIED_SYSCALLS = {
    "ptrace": 101, "syslog": 103, "uselib": 134, "personality": 135, "vhangup": 153, "pivot_root": 155,
    "adjtimex": 159, "chroot": 161, "acct": 163, "settimeofday": 164, "mount": 165, "umount2": 166,
    "swapon": 167, "swapoff": 168, "reboot": 169, "sethostname": 170, "setdomainname": 171, "iopl": 172,
    "ioperm": 173, "init_module": 175, "delete_module": 176, "quotactl": 179, "nfsservctl": 180,
    "lookup_dcookie": 212, "clock_settime": 227, "kexec_load": 246, "add_key": 248, "request_key": 249,
    "keyctl": 250, "unshare": 272, "perf_event_open": 298, "fanotify_init": 300, "name_to_handle_at": 303,
    "open_by_handle_at": 304, "clock_adjtime": 305, "setns": 308, "process_vm_readv": 310,
    "process_vm_writev": 311, "kcmp": 312, "finit_module": 313, "kexec_file_load": 320, "bpf": 321,
    "userfaultfd": 323, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "mount_setattr": 442, "quotactl_fd": 443,
}
_NR_CLONE, _NR_CLONE3, _NR_SECCOMP, _NR_SOCKET, _NR_SOCKETPAIR = 56, 435, 317, 41, 53
_X32_SYSCALL_BIT = 0x40000000
_AUDIT_ARCH_X86_64 = 0xC000003E
_CLONE_NEW_FLAGS = 0x7E020080  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME
_AF_UNIX, _AF_INET, _AF_INET6 = 1, 2, 10
_SOCK_STREAM, _SOCK_SEQPACKET, _SOCK_TYPE_MASK = 1, 5, 0xF  # the type without SOCK_CLOEXEC/NONBLOCK

_LD_W_ABS, _AND_K, _JEQ, _JGE, _JSET, _RET = 0x20, 0x54, 0x15, 0x35, 0x45, 0x06
_RET_ALLOW, _RET_ERRNO, _RET_KILL_PROCESS = 0x7FFF0000, 0x00050000, 0x80000000
_OFF_NR, _OFF_ARCH, _OFF_ARG0, _OFF_ARG1 = 0, 4, 16, 24  # struct seccomp_data; args' low words (little-endian)
_FILTER_FLAG_TSYNC = 1


def supported() -> bool:
    """The filter's table is x86-64's; seccomp itself must be compiled in (a Seccomp: line)."""
    if platform.machine() != "x86_64":
        return False
    with open("/proc/self/status") as f:
        return any(line.startswith("Seccomp:") for line in f)


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def build_program() -> bytes:
    """The BPF program as bytes; each jump offset counts instructions after the jumping one."""
    denied = sorted(DENIED_SYSCALLS.values())
    # layout: header (5) · one JEQ per denied call · clone3 · clone (3) · socket (4) · socketpair (7)
    #         · ALLOW · EPERM · ENOSYS
    n_checks = len(denied)
    socket_at = 5 + n_checks + 1 + 3
    socketpair_at = socket_at + 4
    allow_at = socketpair_at + 7
    eperm_at, enosys_at = allow_at + 1, allow_at + 2
    prog = [
        _insn(_LD_W_ABS, 0, 0, _OFF_ARCH),
        _insn(_JEQ, 1, 0, _AUDIT_ARCH_X86_64),
        _insn(_RET, 0, 0, _RET_KILL_PROCESS),
        _insn(_LD_W_ABS, 0, 0, _OFF_NR),
        _insn(_JGE, eperm_at - 5, 0, _X32_SYSCALL_BIT),
    ]

    def jump(jt_to: int | None, jf_to: int | None, code: int, k: int) -> None:
        """A conditional jump to absolute positions; None falls through to the next instruction."""
        here = len(prog)
        jt = 0 if jt_to is None else jt_to - here - 1
        jf = 0 if jf_to is None else jf_to - here - 1
        assert 0 <= jt <= 255 and 0 <= jf <= 255
        prog.append(_insn(code, jt, jf, k))

    for nr in denied:
        jump(eperm_at, None, _JEQ, nr)
    jump(enosys_at, None, _JEQ, _NR_CLONE3)
    # clone: any CLONE_NEW* flag in arg0 → EPERM
    jump(None, socket_at, _JEQ, _NR_CLONE)
    prog.append(_insn(_LD_W_ABS, 0, 0, _OFF_ARG0))
    jump(eperm_at, allow_at, _JSET, _CLONE_NEW_FLAGS)
    # socket: the family (arg0) must be AF_INET or AF_INET6
    assert len(prog) == socket_at
    jump(None, socketpair_at, _JEQ, _NR_SOCKET)
    prog.append(_insn(_LD_W_ABS, 0, 0, _OFF_ARG0))
    jump(allow_at, None, _JEQ, _AF_INET)
    jump(allow_at, eperm_at, _JEQ, _AF_INET6)
    # socketpair: AF_UNIX (arg0), and a stream or seqpacket type (arg1, flags masked off)
    assert len(prog) == socketpair_at
    jump(None, allow_at, _JEQ, _NR_SOCKETPAIR)
    prog.append(_insn(_LD_W_ABS, 0, 0, _OFF_ARG0))
    jump(None, eperm_at, _JEQ, _AF_UNIX)
    prog.append(_insn(_LD_W_ABS, 0, 0, _OFF_ARG1))
    prog.append(_insn(_AND_K, 0, 0, _SOCK_TYPE_MASK))
    jump(allow_at, None, _JEQ, _SOCK_STREAM)
    jump(allow_at, eperm_at, _JEQ, _SOCK_SEQPACKET)
    assert len(prog) == allow_at
    prog += [_insn(_RET, 0, 0, _RET_ALLOW), _insn(_RET, 0, 0, _RET_ERRNO | errno.EPERM),
             _insn(_RET, 0, 0, _RET_ERRNO | errno.ENOSYS)]
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install() -> None:
    """Load the filter for every thread of this process (TSYNC); needs PR_SET_NO_NEW_PRIVS."""
    if platform.machine() != "x86_64":  # not supported(): /proc may already be out of reach
        raise OSError("seccomp filter table is x86-64 only; this machine is " + platform.machine())
    program = build_program()
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(_NR_SECCOMP, 1, _FILTER_FLAG_TSYNC, ctypes.byref(fprog)) != 0:  # SECCOMP_SET_MODE_FILTER
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp: {os.strerror(err)}")
