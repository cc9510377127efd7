"""The default seccomp profile of every runc container (pure: builds the OCI ``linux.seccomp`` value).

A deny list: every syscall is allowed except the ones below, which fail with EPERM (clone3 with ENOSYS, so
libc falls back to clone, whose flags the filter can see). Together with no capabilities, a non-root uid and
``noNewPrivileges``, this is Docker's default posture or stricter: no mounts, no new user namespaces, no
joining other namespaces, no ptrace or cross-process memory access, no kernel keyring, no eBPF, no perf, no
userfaultfd, no kernel modules or kexec, no clock setting, no reboot or swap, no io_uring, no raw I/O ports.

The filter covers x86_64 and both of its compat ABIs (i386 and x32), so a 32-bit or x32 binary cannot dodge
it with a syscall number of another table; syscalls of any other architecture kill the process (libseccomp's
default for a foreign architecture).
"""
from __future__ import annotations

import errno
from typing import Any

ARCHITECTURES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
CLONE_NEWUSER = 0x10000000

# Always refused (EPERM), grouped by what they would give a tenant.
DENIED: dict[str, list[str]] = {
    "mounts": ["mount", "umount", "umount2", "pivot_root", "mount_setattr", "fsopen", "fsconfig", "fsmount",
               "fspick", "move_mount", "open_tree"],
    "namespaces": ["setns"],
    "other processes": ["ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd"],
    "kernel keyring": ["keyctl", "add_key", "request_key"],
    "kernel programs and tracing": ["bpf", "perf_event_open", "userfaultfd", "lookup_dcookie", "fanotify_init"],
    "kernel code": ["kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
                    "create_module", "get_kernel_syms", "query_module", "uselib", "nfsservctl", "_sysctl"],
    "host file handles": ["open_by_handle_at", "name_to_handle_at"],
    "clocks": ["clock_settime", "clock_adjtime", "settimeofday", "adjtimex", "stime"],
    "the machine": ["reboot", "swapon", "swapoff", "acct", "quotactl", "quotactl_fd", "syslog", "vhangup",
                    "sethostname", "setdomainname", "iopl", "ioperm", "vm86", "vm86old"],
    "io_uring (bypasses this filter)": ["io_uring_setup", "io_uring_enter", "io_uring_register"],
}
# personality(2) flags that weaken the process's own protections (ASLR off, executable data, page 0 mapped).
DANGEROUS_PERSONALITY = [0x0040000,    # ADDR_NO_RANDOMIZE
                         0x0400000,    # READ_IMPLIES_EXEC
                         0x0100000,    # MMAP_PAGE_ZERO
                         0x0200000,    # ADDR_COMPAT_LAYOUT
                         0x0800000,    # ADDR_LIMIT_32BIT
                         0x8000000]    # ADDR_LIMIT_3GB


def _deny(names: list[str], args: list[dict[str, Any]] | None = None, err: int = errno.EPERM) -> dict[str, Any]:
    rule: dict[str, Any] = {"names": sorted(names), "action": "SCMP_ACT_ERRNO", "errnoRet": err}
    if args:
        rule["args"] = args
    return rule


def _flag_set(index: int, flag: int) -> dict[str, Any]:
    """An argument condition: bit ``flag`` of argument ``index`` is set."""
    return {"index": index, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}


def denied_names(capabilities: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Every syscall refused outright for a container holding ``capabilities``."""
    names = [n for group in DENIED.values() for n in group]
    if "CAP_SYS_CHROOT" not in capabilities:
        names.append("chroot")
    return sorted(names)


def profile(capabilities: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """The ``linux.seccomp`` value of a container's config.json."""
    syscalls = [
        _deny(denied_names(capabilities)),
        # New user namespaces: the door to most kernel attack surface for an unprivileged process.
        _deny(["unshare"], [_flag_set(0, CLONE_NEWUSER)]),
        _deny(["clone"], [_flag_set(0, CLONE_NEWUSER)]),
        # clone3 passes its flags in memory the filter cannot read: ENOSYS makes libc fall back to clone.
        _deny(["clone3"], err=errno.ENOSYS),
    ]
    syscalls += [_deny(["personality"], [_flag_set(0, flag)]) for flag in DANGEROUS_PERSONALITY]
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": list(ARCHITECTURES), "syscalls": syscalls}
