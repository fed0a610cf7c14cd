"""Runs a command in a pseudo-terminal, as a user's terminal would, for the interaction tests.

    python pty_run.py [--answer TEXT] -- COMMAND ARGS...

Prints everything the terminal showed (colour codes and progress-bar redraws included) and
exits with the command's status. With --answer, types TEXT and Enter when the command asks
(a line ending in "[y/N]" or "confirm:").
"""

import argparse
import os
import pty
import select
import subprocess
import sys
import time

PROMPTS = (b"[y/N]", b"confirm:")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--answer")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command and args.command[0] == "--" else args.command
    main_fd, child_fd = pty.openpty()
    proc = subprocess.Popen(command, stdin=child_fd, stdout=child_fd, stderr=child_fd, close_fds=True)
    os.close(child_fd)
    seen = b""
    answered = False
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main_fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(main_fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            if args.answer is not None and not answered and any(p in seen[-400:] for p in PROMPTS):
                os.write(main_fd, args.answer.encode() + b"\r")
                answered = True
        elif proc.poll() is not None:
            break
    code = proc.wait(timeout=60)
    sys.stdout.write(seen.decode("utf-8", "replace"))
    sys.exit(code)


if __name__ == "__main__":
    main()
