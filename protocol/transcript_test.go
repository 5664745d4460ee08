package protocol

import (
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/filter-milter/filter-milter/compat"
)

// The transcripts are real runs of smtpd 6.8.0p2 (protocol 0.6) and
// 7.8.0p1 (0.7) with two chained test filters, f1 and f2, that logged
// every line: "<< " what smtpd sent, ">> " what the filter answered. The
// test filters proceed on everything and echo data lines unless told
// otherwise by mode.fN (disconnect at ehlo, junk, reject at commit,
// rewrite, an early ".", a report decision, an emitted report line).
const transcriptDir = "../testdata/transcripts"

// decodedType is the type Decode must give for each event that smtpd
// sends and this package knows.
var decodedType = map[Event]reflect.Type{
	"link-connect":    reflect.TypeFor[LinkConnect](),
	"link-greeting":   reflect.TypeFor[LinkGreeting](),
	"link-identify":   reflect.TypeFor[LinkIdentify](),
	"link-tls":        reflect.TypeFor[LinkTLS](),
	"link-auth":       reflect.TypeFor[LinkAuth](),
	"link-disconnect": reflect.TypeFor[LinkDisconnect](),
	"tx-begin":        reflect.TypeFor[TxBegin](),
	"tx-mail":         reflect.TypeFor[TxMail](),
	"tx-rcpt":         reflect.TypeFor[TxRcpt](),
	"tx-envelope":     reflect.TypeFor[TxEnvelope](),
	"tx-data":         reflect.TypeFor[TxData](),
	"tx-commit":       reflect.TypeFor[TxCommit](),
	"tx-reset":        reflect.TypeFor[TxReset](),
	"tx-rollback":     reflect.TypeFor[TxRollback](),
	"protocol-client": reflect.TypeFor[ProtocolClient](),
	"protocol-server": reflect.TypeFor[ProtocolServer](),
	"filter-response": reflect.TypeFor[FilterResponse](),
	"timeout":         reflect.TypeFor[Timeout](),
}

func transcriptFiles(t testing.TB) []string {
	files, err := filepath.Glob(filepath.Join(transcriptDir, "*", "*", "f[12].log"))
	if err != nil || len(files) < 40 {
		t.Fatalf("found %d transcripts under %s (%v); want the 6.8 and 7.8 runs", len(files), transcriptDir, err)
	}
	return files
}

// transcriptLines returns the lines of a transcript, read with Reader.
func transcriptLines(t testing.TB, file string) []string {
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var lines []string
	r := NewReader(f, 0)
	for {
		line, err := r.ReadLine()
		if err == io.EOF {
			return lines
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		lines = append(lines, string(line))
	}
}

// transcriptTally counts what the golden test checked, over all files.
type transcriptTally struct {
	parsed, decoded, proceeds, results, echoes, registers int
	events                                                map[Event]bool
	phases                                                map[Phase]bool
}

func TestTranscripts(t *testing.T) {
	tally := &transcriptTally{events: map[Event]bool{}, phases: map[Phase]bool{}}
	versions := map[compat.Version]bool{}
	for _, file := range transcriptFiles(t) {
		rel, _ := filepath.Rel(transcriptDir, file)
		t.Run(rel, func(t *testing.T) {
			for v := range checkTranscript(t, file, tally) {
				versions[v] = true
			}
		})
	}
	// Guard against a test that silently checks nothing.
	if tally.parsed < 2100 || tally.decoded < 1350 || tally.proceeds < 240 || tally.results < 8 || tally.echoes < 280 || tally.registers < 700 {
		t.Errorf("checked too little: %+v", *tally)
	}
	if !versions[v06] || !versions[v07] {
		t.Errorf("transcripts cover versions %v, want 0.6 and 0.7", versions)
	}
	for event := range decodedType {
		if !tally.events[event] && event != "timeout" {
			t.Errorf("no %s report in the transcripts", event)
		}
	}
	for _, phase := range []Phase{"connect", "ehlo", "starttls", "auth", "mail-from", "rcpt-to", "data", "data-line", "commit", "rset", "noop", "quit"} {
		if !tally.phases[phase] {
			t.Errorf("no %s request in the transcripts", phase)
		}
	}
}

// checkTranscript checks one filter's log and returns the protocol
// versions seen in it.
func checkTranscript(t *testing.T, file string, tally *transcriptTally) map[compat.Version]bool {
	mode := ""
	if b, err := os.ReadFile(filepath.Join(filepath.Dir(file), "mode."+strings.TrimSuffix(filepath.Base(file), ".log"))); err == nil {
		mode = string(b)
	}
	versions := map[compat.Version]bool{}
	// Requests not answered yet, by "session|token": a token names a
	// chain entry, so one key can have several requests (two EHLOs).
	pending := map[string][]Request{}
	// Data lines not echoed yet, by "session|token", in order.
	unechoed := map[string][]Request{}
	seen := map[string]Request{}

	for n, line := range transcriptLines(t, file) {
		where := func() string {
			return filepath.Base(filepath.Dir(file)) + "/" + filepath.Base(file) + ":" + strconv.Itoa(n+1)
		}
		if in, ok := strings.CutPrefix(line, "<< "); ok {
			ev, err := Parse([]byte(in))
			if err != nil {
				t.Errorf("%s: %v", where(), err)
				continue
			}
			tally.parsed++
			if got := rebuild(ev); got != in {
				t.Errorf("%s: fields rebuild %q, want %q", where(), got, in)
			}
			switch e := ev.(type) {
			case Report:
				versions[e.Version] = true
				checkDecode(t, where(), e, tally)
			case Request:
				versions[e.Version] = true
				tally.phases[e.Phase] = true
				key := e.Session + "|" + e.Token
				seen[key] = e
				if e.Phase == "data-line" {
					unechoed[key] = append(unechoed[key], e)
				} else {
					pending[key] = append(pending[key], e)
				}
			}
			continue
		}
		out, ok := strings.CutPrefix(line, ">> ")
		if !ok {
			t.Errorf("%s: neither << nor >>: %q", where(), line)
			continue
		}
		kind, rest, _ := strings.Cut(out, "|")
		switch kind {
		case "register":
			f := strings.SplitN(rest, "|", 3)
			var want []byte
			if len(f) == 1 && f[0] == "ready" {
				want = AppendRegisterReady(nil)
			} else if len(f) == 3 {
				want = AppendRegister(nil, f[0], f[1], f[2])
			}
			if string(want) != out+"\n" {
				t.Errorf("%s: register line %q, encoded %q", where(), out, want)
			}
			tally.registers++
		case "filter-result":
			f := strings.SplitN(rest, "|", 4)
			if len(f) < 3 {
				t.Errorf("%s: short filter-result %q", where(), out)
				continue
			}
			// 0.6 and 0.7 answer SESSION|TOKEN.
			key := f[0] + "|" + f[1]
			reqs := pending[key]
			if len(reqs) == 0 {
				t.Errorf("%s: %q answers no request", where(), out)
				continue
			}
			req := reqs[0]
			pending[key] = reqs[1:]
			d, param := Decision(f[2]), ""
			if len(f) == 4 {
				param = f[3]
			}
			got, err := AppendResult(nil, compat.For(req.Version), req.Session, req.Token, d, param)
			switch {
			case d == Proceed && param == "":
				tally.proceeds++
				if err != nil || string(got) != out+"\n" {
					t.Errorf("%s: the filter sent %q, AppendResult gives %q, %v", where(), out, got, err)
				}
			case d == "report":
				// Fatal to smtpd up to 7.5, misread after: refused.
				if err == nil {
					t.Errorf("%s: AppendResult accepted the report decision: %q", where(), got)
				}
			default:
				tally.results++
				if err != nil || string(got) != out+"\n" {
					t.Errorf("%s: the filter sent %q, AppendResult gives %q, %v", where(), out, got, err)
				}
			}
		case "filter-dataline":
			f := strings.SplitN(rest, "|", 3)
			if len(f) < 3 {
				t.Errorf("%s: short filter-dataline %q", where(), out)
				continue
			}
			key := f[0] + "|" + f[1]
			if _, ok := seen[key]; !ok {
				t.Errorf("%s: %q answers no request", where(), out)
				continue
			}
			q := unechoed[key]
			if len(q) == 0 || q[0].Param != f[2] {
				// Only a filter told to end the message early writes
				// lines it was not sent.
				if !strings.Contains(mode, "earlydot") {
					t.Errorf("%s: %q is not the echo of the next data line", where(), out)
				}
				continue
			}
			req := q[0]
			unechoed[key] = q[1:]
			got := AppendDataLine(nil, compat.For(req.Version), req.Session, req.Token, []byte(req.Param))
			if string(got) != out+"\n" {
				t.Errorf("%s: the filter echoed %q, AppendDataLine gives %q", where(), out, got)
			}
			tally.echoes++
		case "report":
			// The test filter emitting a report line, which kills smtpd;
			// nothing here encodes one.
			if !strings.Contains(mode, "sendreport") {
				t.Errorf("%s: unexpected report line %q", where(), out)
			}
		default:
			t.Errorf("%s: unknown filter output %q", where(), out)
		}
	}
	return versions
}

func checkDecode(t *testing.T, where string, r Report, tally *transcriptTally) {
	tally.events[r.Event] = true
	got, err := r.Decode()
	if err != nil {
		t.Errorf("%s: %v", where, err)
		return
	}
	tally.decoded++
	want, known := decodedType[r.Event]
	switch {
	case known && reflect.TypeOf(got) != want:
		t.Errorf("%s: %s decoded as %T, want %v", where, r.Event, got, want)
	case !known && reflect.TypeOf(got) != reflect.TypeFor[Unhandled]():
		t.Errorf("%s: unknown event %s decoded as %T", where, r.Event, got)
	}
	// Fields that the transcripts show must survive decoding whole.
	switch e := got.(type) {
	case LinkAuth:
		if e.Result != "pass" && e.Result != "fail" && e.Result != "error" {
			t.Errorf("%s: link-auth result %q", where, e.Result)
		}
	case TxMail:
		if e.Result != "ok" && e.Result != "permfail" && e.Result != "tempfail" {
			t.Errorf("%s: tx-mail result %q", where, e.Result)
		}
	case TxRcpt:
		if e.Result != "ok" && e.Result != "permfail" && e.Result != "tempfail" {
			t.Errorf("%s: tx-rcpt result %q", where, e.Result)
		}
	case LinkConnect:
		for _, s := range []string{e.Src, e.Dest} {
			if _, err := ParseEndpoint(s); err != nil {
				t.Errorf("%s: %v", where, err)
			}
		}
	case LinkTLS:
		if _, _, _, ok := SplitTLS(e.Info); !ok {
			t.Errorf("%s: SplitTLS(%q) failed", where, e.Info)
		}
	}
}

// TestTranscriptSpecialLines pins a few transcript lines whose values
// matter to the gateway.
func TestTranscriptSpecialLines(t *testing.T) {
	want := map[string]any{
		"report|0.7|1795504672.838734|smtp-in|link-auth|b65e53face041212|pass|al|ice":                                                  LinkAuth{"pass", "al|ice"},
		"report|0.6|1795504563.040492|smtp-in|tx-mail|229dd54d9c889a05|191901f5|ok|":                                                   TxMail{"191901f5", "ok", ""},
		"report|0.6|1795504534.998761|smtp-in|link-connect|0d46959a1949ea5d|<unknown>|fail|[::1]:37382|[::1]:2525":                     LinkConnect{"<unknown>", "fail", "[::1]:37382", "[::1]:2525"},
		"report|0.6|1795504496.119689|smtp-in|filter-response|011a8e6fb38affa4|rcpt-to|rewrite|<nobody@example.org>":                   FilterResponse{"rcpt-to", "rewrite", "<nobody@example.org>"},
		"report|0.7|1795504662.981171|smtp-in|tx-commit|61cd21cac6515ff6|498e96ea|547":                                                 TxCommit{"498e96ea", 547},
		"report|0.6|1795504548.386020|smtp-in|link-connect|26a153e15705968d|vm|pass|unix:/var/run/smtpd.sock|unix:/var/run/smtpd.sock": LinkConnect{"vm", "pass", "unix:/var/run/smtpd.sock", "unix:/var/run/smtpd.sock"},
	}
	found := map[string]bool{}
	for _, file := range transcriptFiles(t) {
		for _, line := range transcriptLines(t, file) {
			in, ok := strings.CutPrefix(line, "<< ")
			if _, wanted := want[in]; !ok || !wanted {
				continue
			}
			found[in] = true
			ev, err := Parse([]byte(in))
			if err != nil {
				t.Fatal(err)
			}
			got, err := ev.(Report).Decode()
			if err != nil || !reflect.DeepEqual(got, want[in]) {
				t.Errorf("%q decodes to %#v, %v; want %#v", in, got, err, want[in])
			}
		}
	}
	for line := range want {
		if !found[line] {
			t.Errorf("line not in the transcripts: %q", line)
		}
	}
}
