//go:build integration

package integration

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// traceLine is one line filter-milter wrote to stderr, as smtpd logged it:
// "<listener>: <level> <message> {json fields}".
type traceLine struct {
	Listener, Level, Msg string
	Fields               map[string]any
	Raw                  string
}

var traceLineRe = regexp.MustCompile(`^(\w+): (debug|info|warn|error) ([^{]*?)(?: (\{.*\}))?$`)

// traceLines parses filter-milter's lines of every listener in smtpd's log.
func traceLines(t *testing.T, log string) []traceLine {
	var out []traceLine
	for _, l := range strings.Split(log, "\n") {
		m := traceLineRe.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		tl := traceLine{Listener: m[1], Level: m[2], Msg: m[3], Raw: l}
		if m[4] != "" {
			if err := json.Unmarshal([]byte(m[4]), &tl.Fields); err != nil {
				t.Errorf("filter-milter's fields are not JSON: %v: %q", err, l)
			}
		}
		out = append(out, tl)
	}
	return out
}

// traceOf is the trace lines (filter lines in and out, milter commands and
// replies) of one listener.
func traceOf(lines []traceLine, listener string) []traceLine {
	var out []traceLine
	for _, l := range lines {
		switch l.Msg {
		case "filter line in", "filter line out", "milter command", "milter reply":
			if l.Listener == listener {
				out = append(out, l)
			}
		}
	}
	return out
}

// TestTrace: at -log-level debug a session's every filter line in and out
// and every milter packet is in smtpd's log, message content elided
// (shown with -trace-content); at -log-level info only the sessions of
// trace_clients (the file's key; -trace-clients the flag) are; the
// message line says who sent what and what each milter said, in the
// metrics' words.
func TestTrace(t *testing.T) {
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		env := harness.NewEnv(t)
		m := harness.StartPyMilter(t, env, "scripted-milter", harness.ScriptedMilter(t), "unix")
		args := func(extra ...string) []string { return append([]string{"-milter", m.Spec}, extra...) }
		// trace_clients as a postmaster would set it, in the file.
		conf := env.WriteFile("trace.toml", []byte("log_level = \"info\"\ntrace_clients = [\"192.0.2.0/24\", \"127.0.0.1/32\"]\n"), 0o644)
		s := harness.StartSMTPD(t, env, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "debug", Filter: args("-log-level", "debug")},
			{Name: "traced", Filter: args("-config", conf)},
			{Name: "untraced", Filter: args("-log-level", "info", "-trace-clients", "192.0.2.0/24")},
			{Name: "content", Filter: args("-log-level", "debug", "-trace-content")},
		}})
		const secret = "secret-body-text-5f3a"
		for _, l := range []string{"debug", "traced", "untraced", "content"} {
			msg := scriptedMessage("trace-"+l, "X-Secret: "+secret)
			msg.Data = append(msg.Data, secret+"\n"...)
			if r := s.Send(t, l, msg); !strings.HasPrefix(r.EndOfDataReply(), "250 ") {
				t.Fatalf("%s: end of DATA %q, want 250; swaks said:\n%s", l, r.EndOfDataReply(), r.Output)
			}
		}
		s.WaitDeliveries(t, 4, 20*time.Second)
		s.Healthy(t)
		lines := traceLines(t, s.Proc.Log())

		for _, l := range []string{"debug", "traced"} {
			tr := traceOf(lines, l)
			var got []string
			for _, tl := range tr {
				got = append(got, tl.Raw)
				if tl.Level != "debug" || tl.Fields["session"] == nil {
					t.Errorf("%s: trace line not at debug with its session: %s", l, tl.Raw)
				}
				if strings.Contains(tl.Raw, secret) {
					t.Errorf("%s: message content in the trace: %s", l, tl.Raw)
				}
			}
			text := strings.Join(got, "\n")
			for _, want := range [][]string{
				{"filter line in", `|link-connect|`, `|127.0.0.1:`},
				{"filter line in", `|data-line|`, `"elided": `},
				{"filter line out", `"filter-result|`, `|proceed"`},
				{"filter line out", `"filter-dataline|`, `"elided": `},
				{"milter command", `"packet": "SMFIC_MAIL"`, `<alice@test.example>`},
				{"milter command", `"packet": "SMFIC_HEADER"`, `"header": "X-Secret"`, `"elided": `},
				{"milter command", `"packet": "SMFIC_BODY"`, `"elided": `},
				{"milter reply", `"packet": "SMFIR_CONTINUE"`},
			} {
				if !anyLineHas(got, want...) {
					t.Errorf("%s: no trace line with %q in:\n%s", l, want, text)
				}
			}
			t.Logf("%s: %d trace lines, e.g.\n%s", l, len(tr), strings.Join(got[:min(6, len(got))], "\n"))
		}
		if tr := traceOf(lines, "untraced"); len(tr) > 0 {
			t.Errorf("a client not in -trace-clients is traced at -log-level info: %s", tr[0].Raw)
		}
		var content []string
		for _, tl := range traceOf(lines, "content") {
			content = append(content, tl.Raw)
		}
		for _, want := range [][]string{
			{"filter line in", `|data-line|`, `|X-Secret: ` + secret + `"`},
			{"milter command", `"packet": "SMFIC_HEADER"`, `"payload": "X-Secret\\x00` + secret + `\\x00"`},
			{"milter command", `"packet": "SMFIC_BODY"`, secret},
			{"filter line out", `"filter-dataline|`, `|` + secret + `"`},
		} {
			if !anyLineHas(content, want...) {
				t.Errorf("-trace-content: no trace line with %q in:\n%s", want, strings.Join(content, "\n"))
			}
		}

		for _, l := range []string{"debug", "traced", "untraced", "content"} {
			var msgs []traceLine
			for _, tl := range lines {
				if tl.Listener == l && tl.Msg == "message" {
					msgs = append(msgs, tl)
				}
			}
			if len(msgs) != 1 {
				t.Errorf("%s: %d message lines, want 1", l, len(msgs))
				continue
			}
			f := msgs[0].Fields
			t.Logf("%s: %s", l, msgs[0].Raw)
			for k, want := range map[string]any{"client": "127.0.0.1", "helo": harness.ClientHelo, "sender": "alice@test.example",
				"recipients": float64(1), "verdict": "accept"} {
				if f[k] != want {
					t.Errorf("%s: message line %s = %v, want %v", l, k, f[k], want)
				}
			}
			if size, _ := f["size"].(float64); size < float64(len(secret)) {
				t.Errorf("%s: message line size %v", l, f["size"])
			}
			ms, _ := f["milters"].([]any)
			if len(ms) != 1 {
				t.Errorf("%s: milters %v, want one", l, f["milters"])
				continue
			}
			mm, _ := ms[0].(map[string]any)
			if mm["milter"] != m.Spec || mm["verdict"] != "accept" || fmt.Sprint(mm["took"]) == "0" {
				t.Errorf("%s: the milter's part of the message line: %v", l, mm)
			}
		}
	})
}

func anyLineHas(lines []string, parts ...string) bool {
	for _, l := range lines {
		ok := true
		for _, p := range parts {
			if !strings.Contains(l, p) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}
