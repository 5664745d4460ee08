#!/usr/bin/python3
"""Actions milter for filter-milter's integration tests (integration/replies_test.go).

Run with Debian's interpreter (python3-milter is only importable there):

    /usr/bin/python3 actions_milter.py inet:PORT@127.0.0.1 [--leadspc]
    /usr/bin/python3 actions_milter.py unix:/path/to/socket [--leadspc]

One instance covers every milter answer and modification; what it does is
driven by the SMTP session and the message:

Connection scope at connect, by the client's address (the test connects
from other loopback addresses than 127.0.0.1)
  127.0.0.2   setreply 550 5.7.1, REJECT
  127.0.0.3   setreply 451 4.7.1, TEMPFAIL
  127.0.0.4   setreply 421 4.7.0, TEMPFAIL
  127.0.0.5   ACCEPT: no more callbacks for the connection
  127.0.0.6   DISCARD (not allowed at connect: the MTA ignores it)

Connection scope at HELO
  HELO helo-reject.example    setreply 550 5.7.1, REJECT
  HELO helo-tempfail.example  setreply 451 4.7.1, TEMPFAIL
  HELO helo-421.example       setreply 421 4.7.0, TEMPFAIL
  HELO helo-accept.example    ACCEPT: no more callbacks for the connection
                              (any that still arrives is logged all the same)
  HELO helo-discard.example   DISCARD (not allowed at HELO: the MTA ignores it)

MAIL FROM local part
  mail-reject    setreply 550 5.7.1, REJECT
  mail-tempfail  setreply 451 4.7.1, TEMPFAIL
  mail-421       setreply 421 4.7.0, TEMPFAIL
  mail-accept    ACCEPT: no more callbacks for the message
  mail-discard   DISCARD
  data-reject    (CONTINUE here) REJECT 550 5.7.1 from the DATA callback

RCPT TO local part
  rcpt-reject    setreply 550 5.7.1, REJECT that recipient
  rcpt-reject-plain  REJECT that recipient, no setreply (the MTA's text)
  rcpt-tempfail  setreply 451 4.7.1, TEMPFAIL that recipient
  rcpt-421       setreply 421 4.7.0, TEMPFAIL
  rcpt-accept    ACCEPT: no more callbacks for the message
  rcpt-discard   DISCARD the whole message

Header "X-Test-Stage-Reject: header|eoh|body"
  setreply 550 5.7.1 and REJECT from that callback (body: the first chunk).
Header "X-Test-Stage-Accept: header"
  ACCEPT from the header callback: no more callbacks for the message.

Header "X-Test-Actions: a,b,..." (applied at end of message, in this order)
  addheader    X-Added: added
  insheader    X-Inserted: at index 0 at index 0, then X-Inserted: at index 2
               at index 2 (of the header list as changed by the first)
  chgheader    Subject: "[changed] " + the old value
  delheader    chgheader X-Delete-Me (1st) with an empty value
  chgheader2   the 2nd X-Multi becomes "second, changed"
  replbody     the body replaced in two replbody chunks (REPLBODY below)
  folded       X-Folded: a<LF><TAB>b
  chgfrom      <changed-sender@test.example>
  addrcpt      <added@test.example>
  addrcpt_par  <added-par@test.example> NOTIFY=NEVER
  delrcpt      the first recipient of the message
  quarantine   "held by actions milter"
  progress     smfi_progress, then sleep 1 s before answering
  skip         SKIP from the first body chunk (not an EOM action: the body
               must not be seen any more, the EOM still comes)

Header "X-Test-Verdict:" gives the end-of-message answer
  continue (default), accept, reject (554 5.7.1), tempfail (451 4.7.1),
  reject-plain and tempfail-plain (REJECT / TEMPFAIL without setreply),
  discard, reply-multi (a 3-line 550 5.7.1), reply-421 (421 4.7.0 with
  TEMPFAIL), reply-noxcode (setreply "550", no enhanced code, "plain text").

Negotiation: every action the MTA offers and SKIP; no callback is turned
off except UNKNOWN, no no-reply flag. Without --leadspc the milter does NOT
negotiate SMFIP_HDR_LEADSPC (header values arrive without the one leading
space; values it supplies get one added). With --leadspc it does: values
arrive with their leading space, and the values it supplies in addheader,
insheader, chgheader and folded carry their own leading space, so that
the delivered message is the same in both modes.

Log: one JSON object per line on stderr, flushed, for every callback:
{"t": seconds, "conn": n, "cb": name, ...}; byte strings are decoded as
latin-1 so that each byte is one character. The test reads it.
"""

import json
import sys
import time

import Milter

START = time.time()
LEADSPC = False

REPLBODY = [
    b"replaced body, chunk one\r\n.leading dot line\r\nhalf of a li",
    b"ne split over two chunks\r\n.\r\na line with | pipes | in it\r\n..two dots\r\nlast line\r\n",
]


def text(v):
    if isinstance(v, bytes):
        return v.decode("latin-1")
    return v


def log(conn, cb, **kw):
    rec = {"t": round(time.time() - START, 3), "conn": conn, "cb": cb}
    for k, v in kw.items():
        if isinstance(v, (list, tuple)):
            v = [text(x) for x in v]
        else:
            v = text(v)
        rec[k] = v
    sys.stderr.write(json.dumps(rec, sort_keys=True) + "\n")
    sys.stderr.flush()


def local_part(addr):
    a = text(addr).strip()
    if a.startswith("<") and a.endswith(">"):
        a = a[1:-1]
    return a.rsplit("@", 1)[0].lower()


def sp(value):
    """A value the milter supplies: with its own leading space in --leadspc mode."""
    return " " + value if LEADSPC else value


class ActionsMilter(Milter.Base):
    def __init__(self):
        self.id = Milter.uniqueID()
        self.reset()

    def reset(self):
        self.verdict = ""
        self.actions = []
        self.stage_reject = ""
        self.stage_accept = ""
        self.subject = None
        self.rcpts = []
        self.nbody = 0
        self.skipped = False
        self.data_reject = False

    def reply(self, code, xcode, msg, *more):
        self.setreply(code, xcode, msg, *more)

    def negotiate(self, opts):
        offered = list(opts)
        r = Milter.Base.negotiate(self, opts)
        log(self.id, "negotiate", offered="actions=0x%x protocol=0x%x" % (offered[0], offered[1]),
            action_bits="0x%x" % self._actions, protocol="0x%x" % self._protocol,
            leadspc=bool(self._protocol & Milter.P_HDR_LEADSPC),
            skip=bool(self._protocol & Milter.P_SKIP))
        return r

    def connect(self, hostname, family, hostaddr):
        ip = hostaddr[0] if isinstance(hostaddr, tuple) and hostaddr else ""
        kw = dict(hostname=hostname, hostaddr=repr(hostaddr), ip=ip)
        if ip == "127.0.0.2":
            self.reply("550", "5.7.1", "connection rejected by actions milter")
            log(self.id, "connect", answer="REJECT 550 5.7.1", **kw)
            return Milter.REJECT
        if ip == "127.0.0.3":
            self.reply("451", "4.7.1", "connection temporarily rejected by actions milter")
            log(self.id, "connect", answer="TEMPFAIL 451 4.7.1", **kw)
            return Milter.TEMPFAIL
        if ip == "127.0.0.4":
            self.reply("421", "4.7.0", "connection refused by actions milter, closing")
            log(self.id, "connect", answer="TEMPFAIL 421 4.7.0", **kw)
            return Milter.TEMPFAIL
        if ip == "127.0.0.5":
            log(self.id, "connect", answer="ACCEPT", **kw)
            return Milter.ACCEPT
        if ip == "127.0.0.6":
            log(self.id, "connect", answer="DISCARD", **kw)
            return Milter.DISCARD
        log(self.id, "connect", answer="CONTINUE", **kw)
        return Milter.CONTINUE

    def hello(self, hostname):
        h = text(hostname).lower()
        if h == "helo-reject.example":
            self.reply("550", "5.7.1", "HELO rejected by actions milter")
            log(self.id, "helo", name=hostname, answer="REJECT 550 5.7.1")
            return Milter.REJECT
        if h == "helo-tempfail.example":
            self.reply("451", "4.7.1", "HELO temporarily rejected by actions milter")
            log(self.id, "helo", name=hostname, answer="TEMPFAIL 451 4.7.1")
            return Milter.TEMPFAIL
        if h == "helo-421.example":
            self.reply("421", "4.7.0", "HELO refused by actions milter, closing")
            log(self.id, "helo", name=hostname, answer="TEMPFAIL 421 4.7.0")
            return Milter.TEMPFAIL
        if h == "helo-accept.example":
            log(self.id, "helo", name=hostname, answer="ACCEPT")
            return Milter.ACCEPT
        if h == "helo-discard.example":
            log(self.id, "helo", name=hostname, answer="DISCARD")
            return Milter.DISCARD
        log(self.id, "helo", name=hostname, answer="CONTINUE")
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *params):
        self.reset()
        lp = local_part(mailfrom)
        kw = dict(addr=mailfrom, params=list(params))
        if lp == "mail-reject":
            self.reply("550", "5.7.1", "sender rejected by actions milter")
            log(self.id, "mail", answer="REJECT 550 5.7.1", **kw)
            return Milter.REJECT
        if lp == "mail-tempfail":
            self.reply("451", "4.7.1", "sender temporarily rejected by actions milter")
            log(self.id, "mail", answer="TEMPFAIL 451 4.7.1", **kw)
            return Milter.TEMPFAIL
        if lp == "mail-421":
            self.reply("421", "4.7.0", "sender refused by actions milter, closing")
            log(self.id, "mail", answer="TEMPFAIL 421 4.7.0", **kw)
            return Milter.TEMPFAIL
        if lp == "mail-accept":
            log(self.id, "mail", answer="ACCEPT", **kw)
            return Milter.ACCEPT
        if lp == "mail-discard":
            log(self.id, "mail", answer="DISCARD", **kw)
            return Milter.DISCARD
        if lp == "data-reject":
            self.data_reject = True
        log(self.id, "mail", answer="CONTINUE", **kw)
        return Milter.CONTINUE

    def envrcpt(self, rcpt, *params):
        lp = local_part(rcpt)
        kw = dict(addr=rcpt, params=list(params))
        if lp == "rcpt-reject":
            self.reply("550", "5.7.1", "recipient rejected by actions milter")
            log(self.id, "rcpt", answer="REJECT 550 5.7.1", **kw)
            return Milter.REJECT
        if lp == "rcpt-reject-plain":
            log(self.id, "rcpt", answer="REJECT (no setreply)", **kw)
            return Milter.REJECT
        if lp == "rcpt-tempfail":
            self.reply("451", "4.7.1", "recipient temporarily rejected by actions milter")
            log(self.id, "rcpt", answer="TEMPFAIL 451 4.7.1", **kw)
            return Milter.TEMPFAIL
        if lp == "rcpt-421":
            self.reply("421", "4.7.0", "recipient refused by actions milter, closing")
            log(self.id, "rcpt", answer="TEMPFAIL 421 4.7.0", **kw)
            return Milter.TEMPFAIL
        if lp == "rcpt-accept":
            log(self.id, "rcpt", answer="ACCEPT", **kw)
            return Milter.ACCEPT
        if lp == "rcpt-discard":
            log(self.id, "rcpt", answer="DISCARD", **kw)
            return Milter.DISCARD
        self.rcpts.append(text(rcpt))
        log(self.id, "rcpt", answer="CONTINUE", **kw)
        return Milter.CONTINUE

    def data(self):
        if self.data_reject:
            self.reply("550", "5.7.1", "DATA rejected by actions milter")
            log(self.id, "data", answer="REJECT 550 5.7.1")
            return Milter.REJECT
        log(self.id, "data", answer="CONTINUE")
        return Milter.CONTINUE

    @Milter.decode("bytes")
    def header(self, name, value):
        lname = text(name).lower()
        v = text(value)
        if lname == "x-test-verdict":
            self.verdict = v.strip().lower()
        elif lname == "x-test-actions":
            self.actions += [a.strip().lower() for a in v.split(",") if a.strip()]
        elif lname == "x-test-stage-reject":
            self.stage_reject = v.strip().lower()
        elif lname == "x-test-stage-accept":
            self.stage_accept = v.strip().lower()
        elif lname == "subject" and self.subject is None:
            self.subject = v
        if self.stage_reject == "header":
            self.reply("550", "5.7.1", "message rejected at header by actions milter")
            log(self.id, "header", name=name, value=value, answer="REJECT 550 5.7.1")
            return Milter.REJECT
        if self.stage_accept == "header":
            log(self.id, "header", name=name, value=value, answer="ACCEPT")
            return Milter.ACCEPT
        log(self.id, "header", name=name, value=value, answer="CONTINUE")
        return Milter.CONTINUE

    def eoh(self):
        if self.stage_reject == "eoh":
            self.reply("550", "5.7.1", "message rejected at end of headers by actions milter")
            log(self.id, "eoh", answer="REJECT 550 5.7.1")
            return Milter.REJECT
        log(self.id, "eoh", answer="CONTINUE")
        return Milter.CONTINUE

    def body(self, chunk):
        self.nbody += 1
        kw = dict(n=self.nbody, size=len(chunk), head=chunk[:40], tail=chunk[-40:])
        if self.skipped:
            # The MTA must not send body chunks after SKIP.
            log(self.id, "body", answer="CONTINUE", after_skip=True, **kw)
            return Milter.CONTINUE
        if self.stage_reject == "body":
            self.reply("550", "5.7.1", "message rejected at body by actions milter")
            log(self.id, "body", answer="REJECT 550 5.7.1", **kw)
            return Milter.REJECT
        if "skip" in self.actions:
            self.skipped = True
            log(self.id, "body", answer="SKIP", **kw)
            return Milter.SKIP
        log(self.id, "body", answer="CONTINUE", **kw)
        return Milter.CONTINUE

    def eom(self):
        done = []
        for a in self.actions:
            if a == "addheader":
                self.addheader("X-Added", sp("added"))
            elif a == "insheader":
                self.addheader("X-Inserted", sp("at index 0"), 0)
                self.addheader("X-Inserted", sp("at index 2"), 2)
            elif a == "chgheader":
                old = (self.subject or "").lstrip(" ") if LEADSPC else (self.subject or "")
                self.chgheader("Subject", 1, sp("[changed] " + old))
            elif a == "delheader":
                self.chgheader("X-Delete-Me", 1, "")
            elif a == "chgheader2":
                self.chgheader("X-Multi", 2, sp("second, changed"))
            elif a == "replbody":
                for chunk in REPLBODY:
                    self.replacebody(chunk)
            elif a == "folded":
                self.addheader("X-Folded", sp("a\n\tb"))
            elif a == "chgfrom":
                self.chgfrom("<changed-sender@test.example>")
            elif a == "addrcpt":
                self.addrcpt("<added@test.example>")
            elif a == "addrcpt_par":
                self.addrcpt("<added-par@test.example>", "NOTIFY=NEVER")
            elif a == "delrcpt":
                self.delrcpt(self.rcpts[0] if self.rcpts else "<nobody@test.example>")
            elif a == "quarantine":
                self.quarantine("held by actions milter")
            elif a == "progress":
                self.progress()
                time.sleep(1)
            elif a == "skip":
                continue
            else:
                log(self.id, "eom-unknown-action", action=a)
                continue
            done.append(a)
        v = self.verdict or "continue"
        kw = dict(bodychunks=self.nbody, skipped=self.skipped, actions=done, verdict=v)
        if v == "accept":
            log(self.id, "eom", answer="ACCEPT", **kw)
            return Milter.ACCEPT
        if v == "reject":
            self.reply("554", "5.7.1", "message rejected by actions milter")
            log(self.id, "eom", answer="REJECT 554 5.7.1", **kw)
            return Milter.REJECT
        if v == "tempfail":
            self.reply("451", "4.7.1", "message temporarily rejected by actions milter")
            log(self.id, "eom", answer="TEMPFAIL 451 4.7.1", **kw)
            return Milter.TEMPFAIL
        if v == "reject-plain":
            log(self.id, "eom", answer="REJECT (no setreply)", **kw)
            return Milter.REJECT
        if v == "tempfail-plain":
            log(self.id, "eom", answer="TEMPFAIL (no setreply)", **kw)
            return Milter.TEMPFAIL
        if v == "discard":
            log(self.id, "eom", answer="DISCARD", **kw)
            return Milter.DISCARD
        if v == "reply-multi":
            self.reply("550", "5.7.1", "line1", "line2", "line3")
            log(self.id, "eom", answer="REJECT 550 5.7.1 (3 lines)", **kw)
            return Milter.REJECT
        if v == "reply-421":
            self.reply("421", "4.7.0", "closing connection by actions milter")
            log(self.id, "eom", answer="TEMPFAIL 421 4.7.0", **kw)
            return Milter.TEMPFAIL
        if v == "reply-noxcode":
            self.reply("550", None, "plain text")
            log(self.id, "eom", answer="REJECT 550 (no enhanced code)", **kw)
            return Milter.REJECT
        log(self.id, "eom", answer="CONTINUE", **kw)
        return Milter.CONTINUE

    def abort(self):
        log(self.id, "abort")
        return Milter.CONTINUE

    def close(self):
        log(self.id, "close")
        return Milter.CONTINUE


def main():
    global LEADSPC
    args = sys.argv[1:]
    if len(args) == 2 and args[1] == "--leadspc":
        LEADSPC = True
    elif len(args) != 1:
        sys.stderr.write("usage: %s inet:PORT@127.0.0.1|unix:/path [--leadspc]\n" % sys.argv[0])
        sys.exit(2)
    cls = ActionsMilter
    if LEADSPC:
        cls = Milter.header_leading_space(cls)
    Milter.factory = cls
    Milter.set_flags(Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.ADDRCPT |
                     Milter.ADDRCPT_PAR | Milter.DELRCPT | Milter.QUARANTINE | Milter.CHGFROM |
                     Milter.SETSYMLIST)
    log(0, "start", spec=args[0], leadspc=LEADSPC)
    Milter.runmilter("actions_milter", args[0], 60)
    log(0, "stop")


if __name__ == "__main__":
    main()
