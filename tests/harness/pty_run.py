"""Runs a command in a pseudo-terminal, as a user's terminal would, for the interaction tests.

    python pty_run.py [--answer TEXT] -- COMMAND ARGS...

Prints everything the terminal showed (colour codes and progress-bar redraws included) and
exits with the command's status. With --answer, types TEXT and Enter when the command asks
(a line ending in "[y/N]" or "confirm:"). With --keys KEYS --after TEXT, types KEYS (Python
escapes: "\x03" is Ctrl-C) once TEXT has shown. With --report-echo, prints a last line "ECHO on"
or "ECHO off": whether the terminal echoes once the command is done.
"""

import argparse
import fcntl
import os
import pty
import select
import subprocess
import sys
import termios
import time

PROMPTS = (b"[y/N]", b"confirm:")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--answer")
    parser.add_argument("--keys")
    parser.add_argument("--after")
    parser.add_argument("--report-echo", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command and args.command[0] == "--" else args.command
    main_fd, child_fd = pty.openpty()
    def controlling_terminal():
        # As a login shell's child: its own session, the pseudo-terminal its controlling terminal,
        # so Ctrl-C typed there is SIGINT to it (and whatever it runs in the foreground).
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        command, stdin=child_fd, stdout=child_fd, stderr=child_fd, close_fds=True, preexec_fn=controlling_terminal
    )
    os.close(child_fd)
    seen = b""
    answered = False
    keys = args.keys.encode().decode("unicode_escape").encode("latin-1") if args.keys else None
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
            if keys and args.after and args.after.encode() in seen:
                os.write(main_fd, keys)
                keys = None
        elif proc.poll() is not None:
            break
    if proc.poll() is None and time.monotonic() >= deadline:
        proc.kill()
    code = proc.wait(timeout=60)
    sys.stdout.write(seen.decode("utf-8", "replace"))
    if args.report_echo:
        echo = termios.tcgetattr(main_fd)[3] & termios.ECHO
        sys.stdout.write("\nECHO on\n" if echo else "\nECHO off\n")
    sys.exit(code)


if __name__ == "__main__":
    main()
