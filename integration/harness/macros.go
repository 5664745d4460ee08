package harness

import (
	"bufio"
	"encoding/json"
	"os"
	"strings"
)

// macroMilterScript is a python3-milter script that records, at each
// callback, every macro of QUERY that libmilter's smfi_getsymval finds,
// as one JSON line {"stage": ..., "macros": {name: value}} in the file
// given as its second argument. smfi_getsymval finds a macro the MTA
// sent at this stage or an earlier one of the same scope; a macro the
// MTA did not send is None, one sent with an empty value "".
const macroMilterScript = `#!/usr/bin/python3
import json
import sys

import Milter

QUERY = ["j", "v", "_", "i",
         "{daemon_name}", "{daemon_addr}", "{daemon_port}", "{if_addr}",
         "{client_addr}", "{client_port}", "{client_name}", "{client_ptr}",
         "{tls_version}", "{cipher}", "{cipher_bits}", "{cert_subject}", "{cert_issuer}",
         "{auth_type}", "{auth_authen}", "{auth_author}", "{auth_ssf}",
         "{mail_addr}", "{mail_host}", "{mail_mailer}",
         "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}", "{unsent}"]

OUT = None


def record(m, stage):
    seen = {}
    for name in QUERY:
        v = m.getsymval(name)
        if v is not None:
            seen[name] = v
    OUT.write(json.dumps({"stage": stage, "macros": seen}) + "\n")
    OUT.flush()


class MacroMilter(Milter.Base):
    def connect(self, hostname, family, hostaddr):
        record(self, "connect")
        return Milter.CONTINUE

    def hello(self, hostname):
        record(self, "helo")
        return Milter.CONTINUE

    def envfrom(self, mailfrom, *params):
        record(self, "mail")
        return Milter.CONTINUE

    def envrcpt(self, rcpt, *params):
        record(self, "rcpt")
        return Milter.CONTINUE

    def data(self):
        record(self, "data")
        return Milter.CONTINUE

    def eoh(self):
        record(self, "eoh")
        return Milter.CONTINUE

    def eom(self):
        record(self, "eom")
        return Milter.ACCEPT


def main():
    global OUT
    OUT = open(sys.argv[2], "a")
    Milter.factory = MacroMilter
    Milter.runmilter("macro_milter", sys.argv[1], 60)


if __name__ == "__main__":
    main()
`

// MacroMilter is a running python3-milter script that records the
// macros it sees at each stage.
type MacroMilter struct {
	*PyMilter
	records string
}

// MacroRecord is what the milter saw at one callback: the macros
// smfi_getsymval found, by name as the milter asked ("j", "{client_addr}").
type MacroRecord struct {
	Stage  string            `json:"stage"` // connect, helo, mail, rcpt, data, eoh, eom
	Macros map[string]string `json:"macros"`
}

// StartMacroMilter writes the script into e and runs it on a free port.
func StartMacroMilter(tb TB, e *Env, name string) *MacroMilter {
	tb.Helper()
	script := e.WriteFile(name+".py", []byte(macroMilterScript), 0o755)
	records := e.Path(name + ".jsonl")
	return &MacroMilter{PyMilter: StartPyMilter(tb, e, name, script, "inet", records), records: records}
}

// Records are the callbacks recorded so far, in order.
func (m *MacroMilter) Records(tb TB) []MacroRecord {
	tb.Helper()
	f, err := os.Open(m.records)
	if err != nil {
		tb.Fatalf("harness: macro milter records: %v\n%s", err, Tail(m.Proc.LogPath, 40))
	}
	defer f.Close()
	var out []MacroRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var r MacroRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			tb.Fatalf("harness: macro milter record %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		tb.Fatalf("harness: macro milter records: %v", err)
	}
	return out
}
