package harness

// NoReplyMilterScript is a python3-milter script that negotiates away the
// reply to every stage but end of message (pymilter's @Milter.noreply
// sets libmilter's SMFIP_NR_* flags and turns the callback's CONTINUE
// into SMFIS_NOREPLY, so libmilter writes nothing back). It counts the
// header fields and body bytes it is given and, at end of message, adds
// "X-Noreply: headers=N body=M" and accepts. Any reply the MTA did not
// wait for would reach it out of turn: libmilter sends none.
const NoReplyMilterScript = `#!/usr/bin/python3
import sys

import Milter


class NoReplyMilter(Milter.Base):
    def __init__(self):
        self.headers = 0
        self.body_bytes = 0

    @Milter.noreply
    def connect(self, hostname, family, hostaddr):
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, hostname):
        return Milter.CONTINUE

    @Milter.noreply
    def envfrom(self, mailfrom, *params):
        self.headers = 0
        self.body_bytes = 0
        return Milter.CONTINUE

    @Milter.noreply
    def envrcpt(self, rcpt, *params):
        return Milter.CONTINUE

    @Milter.noreply
    def data(self):
        return Milter.CONTINUE

    @Milter.noreply
    def header(self, name, value):
        self.headers += 1
        return Milter.CONTINUE

    @Milter.noreply
    def eoh(self):
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk):
        self.body_bytes += len(chunk)
        return Milter.CONTINUE

    def eom(self):
        self.addheader("X-Noreply", "headers=%d body=%d" % (self.headers, self.body_bytes))
        return Milter.ACCEPT


def main():
    Milter.factory = NoReplyMilter
    Milter.set_flags(Milter.ADDHDRS)
    Milter.runmilter("noreply_milter", sys.argv[1], 60)


if __name__ == "__main__":
    main()
`
