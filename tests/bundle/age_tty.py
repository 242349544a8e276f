"""Run the real ``age`` CLI on a pseudo-terminal and type a passphrase when it asks.

age reads passphrases only from the terminal (never stdin), so the tests give
it one. Runs as its own process (``python age_tty.py PASSPHRASE CONFIRM age ...``)
so the fork happens outside pytest. Exit status: age's.
"""

from __future__ import annotations

import os
import pty
import select
import sys
import time


def main(argv: list[str]) -> int:
    passphrase, confirm, args = argv[0], argv[1] == "1", argv[2:]
    pid, fd = pty.fork()
    if pid == 0:  # the child: age, with the pty as its controlling terminal
        os.execvp(args[0], args)
    out = b""
    sent = 0
    need = 2 if confirm else 1
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            data = os.read(fd, 1024)
        except OSError:
            break
        if not data:
            break
        out += data
        if sent < need and out.lower().count(b"passphrase") > sent:
            os.write(fd, passphrase.encode() + b"\n")
            sent += 1
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    sys.stderr.write(out.decode("utf-8", "replace"))
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
