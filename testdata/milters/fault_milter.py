#!/usr/bin/python3
"""Fault-injecting milter for filter-milter's fault and multi-milter tests.

Run with Debian's interpreter (python3-milter is only importable there):

    /usr/bin/python3 fault_milter.py SPEC MODE [key=value ...]

SPEC is a libmilter socket (inet:PORT@127.0.0.1 or unix:/path). MODE:

* ok        add "X-Fault-Milter: seen" at end of message, then ACCEPT.
* chsubject change the Subject (smfi_chgheader) to
            "[changed by fault_milter] <old subject>" and add
            "X-Fault-Milter: seen", then ACCEPT.
* hang      sleep for ever inside a callback, so that the MTA's timeout
            must fire. Options: stage=envfrom|eom (default envfrom), and
            match=SUBSTRING: hang only when the envelope sender contains
            it (default: every message). Messages that do not hang are
            handled as in mode ok. stage=envfrom hangs on MAIL, stage=eom at
            end of message. "stage=auto" hangs at envfrom when the sender
            contains "hang-envfrom", at eom when it contains "hang-eom".
* die-mid   os._exit(1) from inside a callback on every Nth message this
            process sees (counted at that callback, over all connections).
            Options: every=N (default 10), stage=body|eom (default eom).
            Messages that do not die are handled as in mode ok.

Every callback is logged to stderr, one flushed line each:

    fault_milter <pid> <conn> <callback> [msgid=<...>] [details]

so that a test can tell which messages a milter saw, and at which stage it
died ("DIE") or hung ("HANG"). Values are logged with repr(), so that
8-bit data cannot raise an exception here.
"""

import os
import sys
import threading
import time

import Milter

START = time.time()
MODE = "ok"
OPTS = {}
COUNT_LOCK = threading.Lock()
COUNT = [0]


def log(*args):
    msg = " ".join(str(a) for a in args)
    sys.stderr.write("fault_milter %d %.3f %s\n" % (os.getpid(), time.time() - START, msg))
    sys.stderr.flush()


def text(v):
    if isinstance(v, bytes):
        return v.decode("utf-8", "surrogateescape")
    return v


class FaultMilter(Milter.Base):
    def __init__(self):
        self.id = Milter.uniqueID()
        self.reset()

    def reset(self):
        self.sender = ""
        self.msgid = ""
        self.subject = None
        self.nsubject = 0
        self.nbody = 0
        self.counted = False

    def tag(self):
        return "%d" % self.id

    def hang(self, stage):
        """Sleep for ever if this message should hang at stage."""
        if MODE != "hang":
            return
        want = OPTS.get("stage", "envfrom")
        if want == "auto":
            if "hang-envfrom" in self.sender:
                want = "envfrom"
            elif "hang-eom" in self.sender:
                want = "eom"
            else:
                return
        elif "match" in OPTS and OPTS["match"] not in self.sender:
            return
        if want != stage:
            return
        log(self.tag(), "HANG", "at=%s" % stage, "sender=%r" % self.sender, "msgid=%s" % self.msgid)
        while True:
            time.sleep(3600)

    def maybe_die(self, stage):
        """os._exit(1) on every Nth message, counted at stage."""
        if MODE != "die-mid" or OPTS.get("stage", "eom") != stage or self.counted:
            return
        self.counted = True
        every = int(OPTS.get("every", "10"))
        with COUNT_LOCK:
            COUNT[0] += 1
            n = COUNT[0]
        if n % every == 0:
            log(self.tag(), "DIE", "at=%s" % stage, "message=%d" % n, "msgid=%s" % self.msgid)
            os._exit(1)

    def connect(self, hostname, family, hostaddr):
        log(self.tag(), "connect", repr(hostname), repr(hostaddr))
        return Milter.CONTINUE

    def hello(self, hostname):
        log(self.tag(), "helo", repr(hostname))
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *params):
        self.reset()
        self.sender = text(mailfrom)
        log(self.tag(), "mail", repr(self.sender))
        self.hang("envfrom")
        return Milter.CONTINUE

    def envrcpt(self, rcpt, *params):
        log(self.tag(), "rcpt", repr(text(rcpt)))
        return Milter.CONTINUE

    def data(self):
        log(self.tag(), "data")
        return Milter.CONTINUE

    @Milter.decode("bytes")
    def header(self, name, value):
        n = text(name)
        v = text(value)
        if n.lower() == "message-id":
            self.msgid = v.strip()
        if n.lower() == "subject":
            self.nsubject += 1
            if self.subject is None:
                self.subject = v
        log(self.tag(), "header", repr(n), repr(v))
        return Milter.CONTINUE

    def eoh(self):
        log(self.tag(), "eoh", "msgid=%s" % self.msgid)
        return Milter.CONTINUE

    def body(self, chunk):
        self.nbody += len(chunk)
        log(self.tag(), "body", "msgid=%s" % self.msgid, "chunk=%d" % len(chunk))
        self.maybe_die("body")
        return Milter.CONTINUE

    def eom(self):
        log(self.tag(), "eom", "msgid=%s" % self.msgid, "bodybytes=%d" % self.nbody)
        self.maybe_die("eom")
        self.hang("eom")
        if MODE == "chsubject":
            old = (self.subject or "").lstrip(" ")
            new = "[changed by fault_milter] " + old
            # index 1: the first Subject field
            self.chgheader("Subject", 1, new)
            log(self.tag(), "eom chgheader Subject", repr(new), "msgid=%s" % self.msgid)
        self.addheader("X-Fault-Milter", "seen")
        log(self.tag(), "eom addheader X-Fault-Milter: seen -> ACCEPT", "msgid=%s" % self.msgid)
        return Milter.ACCEPT

    def abort(self):
        log(self.tag(), "abort", "msgid=%s" % self.msgid)
        return Milter.CONTINUE

    def close(self):
        log(self.tag(), "close")
        return Milter.CONTINUE


def main():
    global MODE
    if len(sys.argv) < 3:
        sys.stderr.write("usage: %s inet:PORT@127.0.0.1|unix:/path ok|chsubject|hang|die-mid [key=value ...]\n" % sys.argv[0])
        sys.exit(2)
    spec, MODE = sys.argv[1], sys.argv[2]
    if MODE not in ("ok", "chsubject", "hang", "die-mid"):
        sys.stderr.write("fault_milter: unknown mode %r\n" % MODE)
        sys.exit(2)
    for kv in sys.argv[3:]:
        k, _, v = kv.partition("=")
        OPTS[k] = v
    Milter.factory = FaultMilter
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS)
    log("listening on", spec, "mode", MODE, repr(OPTS))
    Milter.runmilter("fault_milter", spec, 60)
    log("stopped")


if __name__ == "__main__":
    main()
