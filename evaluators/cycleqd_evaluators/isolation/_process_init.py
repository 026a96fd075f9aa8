"""Sandbox bootstrap: runs as ``python -I -S -c SOURCE CONFIG_JSON`` with the program on stdin.

It is the last trusted code before the untrusted program. Inside the bubblewrap
sandbox it still holds CAP_SETUID, CAP_SETGID and CAP_CHOWN (nothing else): it
writes the program into a fresh work directory on the sandbox's private tmpfs,
sets the per-process rlimits, drops to a never-used uid (which also drops those
capabilities) and execs the interpreter on the program. Without namespaces
(degraded mode) it does the same in a host temporary directory. Only the
standard library is used, and the module is never imported by the package:
its text is passed on the command line, so no file of the checkout is visible.
"""

import json
import os
import resource
import sys

SETUP_FAILED = 125


def _limit(which, value):
    if value is not None:
        resource.setrlimit(which, (value, value))


def _become_program(config, source):
    workdir = config["workdir"]
    uid = config["uid"]
    os.makedirs(workdir, 0o700, exist_ok=True)
    program = os.path.join(workdir, "program.py")
    with open(program, "wb") as handle:
        handle.write(source)
        if uid is not None:
            os.fchown(handle.fileno(), uid, uid)
    if uid is not None:  # last: root holds no DAC override, so the directory closes to it
        os.chown(workdir, uid, uid)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    _limit(resource.RLIMIT_AS, config["memory_bytes"])
    _limit(resource.RLIMIT_CPU, config["cpu_s"])
    _limit(resource.RLIMIT_FSIZE, config["file_size_bytes"])
    _limit(resource.RLIMIT_CORE, 0)
    _limit(resource.RLIMIT_NOFILE, 256)
    if uid is not None:
        _limit(resource.RLIMIT_NPROC, config["max_processes"])
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    os.chdir(workdir)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
    }
    interpreter = config["interpreter"]
    os.execve(interpreter, [interpreter, "-I", "-B", "program.py"], env)


def main():
    config = json.loads(sys.argv[1])
    try:
        source = sys.stdin.buffer.read()
        _become_program(config, source)
    except BaseException as error:  # noqa: BLE001 - reported to the caller, who decides
        print(f"sandbox setup failed: {error}", file=sys.stderr)
    os._exit(SETUP_FAILED)


if __name__ == "__main__":
    main()
