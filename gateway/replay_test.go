package gateway

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/filter-milter/filter-milter/compat"
	"github.com/filter-milter/filter-milter/milter/miltertest"
	"github.com/filter-milter/filter-milter/protocol"
	"github.com/filter-milter/filter-milter/smtpdplay"
)

// TestReplayTranscripts plays every line real smtpd 6.8 (protocol 0.6) and
// 7.8 (0.7) sent in the captured transcripts into the gateway, with an
// in-process milter that accepts everything, and checks each answer: every
// filter request gets proceed, every data line comes back unchanged and in
// order, the "." last, all in that version's field order and per session
// in the order smtpd asked.
func TestReplayTranscripts(t *testing.T) {
	files, _ := filepath.Glob("../testdata/transcripts/*/*/f1.log")
	if len(files) < 10 {
		t.Fatalf("found %d transcripts under ../testdata/transcripts", len(files))
	}
	for _, file := range files {
		name := filepath.Base(filepath.Dir(filepath.Dir(file))) + "/" + filepath.Base(filepath.Dir(file))
		t.Run(name, func(t *testing.T) { replay(t, file) })
	}
}

func replay(t *testing.T, file string) {
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	srv := miltertest.Start(t, miltertest.Script{})
	p := startGateway(t, Tempfail, srv.Spec)

	var cfg smtpdplay.Config
	var lines []string
	want := map[string][]string{}    // session -> expected answers in order
	pending := map[string][]string{} // data lines not yet closed by "."
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		in, ok := strings.CutPrefix(sc.Text(), "<< ")
		if !ok {
			continue
		}
		ev, err := protocol.Parse([]byte(in))
		if err != nil {
			t.Fatalf("%v", err)
		}
		switch e := ev.(type) {
		case protocol.Config:
			// The player writes the handshake, with the transcript's values.
			switch e.Key {
			case "smtpd-version":
				cfg.SmtpdVersion = e.Value
			case "protocol":
				cfg.AnnounceProtocol = true
			}
			continue
		case protocol.Report:
			cfg.Protocol = e.Version
		case protocol.Request:
			cfg.Protocol = e.Version
			l := compat.For(e.Version)
			if e.Phase == "data-line" {
				b := protocol.AppendDataLine(nil, l, e.Session, e.Token, []byte(e.Param))
				pending[e.Session] = append(pending[e.Session], strings.TrimSuffix(string(b), "\n"))
				if e.Param == "." {
					want[e.Session] = append(want[e.Session], pending[e.Session]...)
					delete(pending, e.Session)
				}
				break
			}
			// A message smtpd never closed with "." (a filter before this
			// one in the chain ended it early: the earlydot transcript)
			// is not written back: it is no longer smtpd's data phase.
			delete(pending, e.Session)
			b, _ := protocol.AppendResult(nil, l, e.Session, e.Token, protocol.Proceed, "")
			want[e.Session] = append(want[e.Session], strings.TrimSuffix(string(b), "\n"))
		}
		lines = append(lines, in)
	}
	if len(want) == 0 {
		t.Fatal("no filter request in the transcript")
	}
	p.handshakeWith(cfg)
	if err := p.play.Replay(lines...); err != nil {
		t.Fatal(err)
	}
	for id, w := range want {
		p.expectOn(p.play.Session(id), w...)
	}
	p.finish() // and nothing else, for any session
}
