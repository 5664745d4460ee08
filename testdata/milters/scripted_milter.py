#!/usr/bin/python3
"""Scripted milter for filter-milter's integration tests.

Run with Debian's interpreter (python3-milter is only importable there):

    /usr/bin/python3 scripted_milter.py inet:PORT@127.0.0.1
    /usr/bin/python3 scripted_milter.py unix:/path/to/socket

Behaviour, driven by the message so that one instance serves every test:

* RCPT whose local part is "rcpt-reject": 550 5.7.1 "recipient rejected by
  scripted milter", REJECT for that recipient only (the transaction goes on).
* Header "X-Test-Verdict: reject": at end of message 554 5.7.1 "message
  rejected by scripted milter", REJECT.
* Header "X-Test-Verdict: tempfail": at end of message 451 4.7.1 "message
  temporarily rejected by scripted milter", TEMPFAIL.
* Header "X-Test-Actions: addheader": at end of message
  addheader("X-Scripted-Milter", "seen"), then ACCEPT.
* Otherwise CONTINUE everywhere and ACCEPT at end of message, no change.

Every callback is logged to stderr (one line each, flushed), with values
shown by repr() so that 8-bit data cannot raise an exception here: pymilter
turns an exception inside a callback into "451 4.3.0 pymilter: untrapped
exception".
"""

import sys
import time

import Milter

START = time.time()


def log(*args):
    msg = " ".join(str(a) for a in args)
    sys.stderr.write("scripted_milter %.3f %s\n" % (time.time() - START, msg))
    sys.stderr.flush()


def local_part(addr):
    a = addr.strip()
    if a.startswith("<") and a.endswith(">"):
        a = a[1:-1]
    return a.rsplit("@", 1)[0].lower()


class ScriptedMilter(Milter.Base):
    def __init__(self):
        self.id = Milter.uniqueID()
        self.verdict = b""
        self.actions = []
        self.nheaders = 0
        self.nbodybytes = 0  # never call an attribute self.body: it shadows the callback

    def connect(self, hostname, family, hostaddr):
        log(self.id, "connect", repr(hostname), repr(hostaddr))
        return Milter.CONTINUE

    def hello(self, hostname):
        log(self.id, "helo", repr(hostname))
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *params):
        log(self.id, "mail", repr(mailfrom), repr(params))
        self.verdict = b""
        self.actions = []
        self.nheaders = 0
        self.nbodybytes = 0
        return Milter.CONTINUE

    def envrcpt(self, rcpt, *params):
        if local_part(rcpt) == "rcpt-reject":
            log(self.id, "rcpt", repr(rcpt), "-> REJECT 550 5.7.1")
            self.setreply("550", "5.7.1", "recipient rejected by scripted milter")
            return Milter.REJECT
        log(self.id, "rcpt", repr(rcpt), "-> CONTINUE")
        return Milter.CONTINUE

    def data(self):
        log(self.id, "data")
        return Milter.CONTINUE

    @Milter.decode("bytes")
    def header(self, name, value):
        self.nheaders += 1
        log(self.id, "header", repr(name), repr(value))
        lname = name.lower() if isinstance(name, str) else name.decode("latin-1").lower()
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogateescape")
        if lname == "x-test-verdict":
            self.verdict = value.strip().lower()
        elif lname == "x-test-actions":
            self.actions += [a.strip().lower() for a in value.split(b",") if a.strip()]
        return Milter.CONTINUE

    def eoh(self):
        log(self.id, "eoh", "headers=%d" % self.nheaders)
        return Milter.CONTINUE

    def body(self, chunk):
        self.nbodybytes += len(chunk)
        log(self.id, "body", "chunk=%d" % len(chunk), repr(chunk[:60]))
        return Milter.CONTINUE

    def eom(self):
        log(self.id, "eom", "bodybytes=%d" % self.nbodybytes,
            "verdict=%r" % self.verdict, "actions=%r" % self.actions)
        if self.verdict == b"reject":
            self.setreply("554", "5.7.1", "message rejected by scripted milter")
            log(self.id, "eom -> REJECT 554 5.7.1")
            return Milter.REJECT
        if self.verdict == b"tempfail":
            self.setreply("451", "4.7.1", "message temporarily rejected by scripted milter")
            log(self.id, "eom -> TEMPFAIL 451 4.7.1")
            return Milter.TEMPFAIL
        if b"addheader" in self.actions:
            self.addheader("X-Scripted-Milter", "seen")
            log(self.id, "eom addheader X-Scripted-Milter: seen")
        log(self.id, "eom -> ACCEPT")
        return Milter.ACCEPT

    def abort(self):
        log(self.id, "abort")
        return Milter.CONTINUE

    def close(self):
        log(self.id, "close")
        return Milter.CONTINUE


def main():
    if len(sys.argv) != 2:
        sys.stderr.write("usage: %s inet:PORT@127.0.0.1|unix:/path\n" % sys.argv[0])
        sys.exit(2)
    spec = sys.argv[1]
    Milter.factory = ScriptedMilter
    Milter.set_flags(Milter.ADDHDRS)
    log("listening on", spec)
    Milter.runmilter("scripted_milter", spec, 60)
    log("stopped")


if __name__ == "__main__":
    main()
