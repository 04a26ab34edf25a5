"""The code interpreter's sandbox: stateful Python containers, each a process tree in its own
user, PID, network, mount, IPC, UTS and cgroup namespaces and its own minimal root (pivot_root),
filesystem-confined by Landlock, syscall-filtered by seccomp and bounded by its own cgroup (where
the host allows one), rlimits and a wall-clock timeout.

The server side (`container`, `pool`, `routes`, `service`, `cli`) never imports the child side
(`child`, `capture`), which runs in a fresh interpreter started by `container.spawn`. This
`__init__` imports nothing, so the child's bootstrap stays small.
"""
