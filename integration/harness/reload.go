//go:build integration

package harness

import (
	"fmt"
	"time"
)

// nameMilterScript is a python3-milter script that adds "X-Milter: NAME"
// to every message at end of message and accepts it: which milter a
// message went through shows in the delivered message.
const nameMilterScript = `#!/usr/bin/python3
import sys
import Milter

NAME = sys.argv[2]


class NameMilter(Milter.Base):
    def eom(self):
        self.addheader("X-Milter", NAME)
        sys.stderr.write("name_milter %s eom: X-Milter: %s\n" % (NAME, NAME))
        sys.stderr.flush()
        return Milter.ACCEPT


Milter.factory = NameMilter
Milter.set_flags(Milter.ADDHDRS)
sys.stderr.write("name_milter %s listening on %s\n" % (NAME, sys.argv[1]))
sys.stderr.flush()
Milter.runmilter("name_milter_" + NAME, sys.argv[1], 60)
`

// StartNameMilter runs a milter on a free port of 127.0.0.1 that adds
// "X-Milter: name" to every message.
func StartNameMilter(tb TB, e *Env, name string) *PyMilter {
	tb.Helper()
	script := e.WriteFile("name_milter.py", []byte(nameMilterScript), 0o755)
	return StartPyMilter(tb, e, "name-milter-"+name, script, "inet", name)
}

// WriteRaw writes b to the server as it is, without reading a reply: a
// test holds a message in the middle of DATA with the first lines sent.
func (sc *SMTPConn) WriteRaw(b []byte) error {
	fmt.Fprintf(&sc.Transcript, "C: (%d bytes: %q)\n", len(b), b)
	_ = sc.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := sc.c.Write(b)
	return err
}
