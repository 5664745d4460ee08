#!/usr/bin/python3
"""Minimal OpenSMTPD proc-exec filter for the harness self-check.

It registers for the data-line phase only and echoes every line back
unchanged (still dot-stuffed, as smtpd sent it). A message that goes through
it must be delivered exactly as without a filter: TestHarnessBaseline checks
that, so a difference seen with filter-milter is filter-milter's.
"""
import os
import pwd
import sys

inp = sys.stdin.buffer
out = sys.stdout.buffer


def emit(line):
    out.write(line + b"\n")
    out.flush()


# smtpd logs this stderr line as "echo: ..."; TestHarnessBaseline checks
# which user smtpd runs filter procs as.
sys.stderr.write("echo_filter: running as uid=%d(%s) gid=%d cwd=%s\n" % (
    os.getuid(), pwd.getpwuid(os.getuid()).pw_name, os.getgid(), os.getcwd()))
sys.stderr.flush()

for raw in inp:
    line = raw.rstrip(b"\n")
    if line.startswith(b"config|"):
        if line == b"config|ready":
            emit(b"register|filter|smtp-in|data-line")
            emit(b"register|ready")
        continue
    parts = line.split(b"|", 7)
    if parts[0] == b"filter" and len(parts) >= 7 and parts[4] == b"data-line":
        session, token = parts[5], parts[6]
        payload = parts[7] if len(parts) > 7 else b""
        # protocol 0.5 and later (smtpd 6.7+): session first, then token
        emit(b"filter-dataline|" + session + b"|" + token + b"|" + payload)
    else:
        sys.stderr.write("echo_filter: unexpected line: %r\n" % line[:200])
        sys.stderr.flush()
