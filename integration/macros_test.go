//go:build integration

package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/filter-milter/filter-milter/integration/harness"
)

// macroConfig is filter-milter's configuration for TestMacros: a list
// per stage with names no other stage lists, so that the stage a macro
// first shows at is the stage that sent it; {cert_subject} and
// {auth_type} (no AUTH here) have no value and must not be sent;
// {mail_mailer} and {cert_issuer} come from macro_defaults; v from
// macro_v.
const macroConfig = `log_level = "debug"
connect_macros = "j {client_addr} {cert_subject}"
helo_macros = ["{daemon_name}", "v"]
mail_macros = "{mail_addr}, {mail_mailer}"
rcpt_macros = "{rcpt_addr} i"
data_macros = "{mail_host}"
eoh_macros = "{rcpt_host}"
eom_macros = "{auth_type} {client_port} {cert_issuer}"
macro_defaults = { "{mail_mailer}" = "smtp", "{cert_issuer}" = "CN=Test CA" }
macro_v = "Test MTA 9.9"

[[milter]]
name = "macros"
socket = "%s"
`

// stageMacros is what one stage's list must deliver: name → value, ""
// for any value but empty.
type stageMacros struct {
	stage  string
	macros map[string]string
}

// TestMacros runs smtpd → filter-milter → a python3-milter script that
// records, at each callback, the macros libmilter hands it. With
// configured lists, each stage's macros arrive at that stage and not
// before, with their values (macro_defaults and macro_v included), and
// macros with no value are never sent; with the default lists, v is
// "OpenSMTPD <version>" and the macros OpenSMTPD cannot supply are
// never sent.
func TestMacros(t *testing.T) {
	forEachSMTPD(t, func(t *testing.T, v harness.SMTPDVersion) {
		env := harness.NewEnv(t)
		configured := harness.StartMacroMilter(t, env, "configured")
		defaults := harness.StartMacroMilter(t, env, "defaults")
		cfg := env.WriteFile("macros.toml", []byte(fmt.Sprintf(macroConfig, configured.SpecHostPort())), 0o644)
		s := harness.StartSMTPD(t, env, harness.SMTPDConfig{Binary: v.Binary, Listeners: []harness.Listener{
			{Name: "configured", Filter: []string{"-config", cfg}},
			{Name: "defaults", Filter: filterArgs(defaults.SpecHostPort())},
		}})
		for _, l := range []string{"configured", "defaults"} {
			m := interopMessage("macros-"+l, "Alice <alice@test.example>", nil, "Hello Bob,\n\nmacros.\n")
			expectEndOfData(t, sendOne(t, s, l, "alice@test.example", m), "250 ")
		}
		s.WaitDeliveries(t, 2, 20*time.Second)

		t.Run("configured lists", func(t *testing.T) {
			want := []stageMacros{
				{"connect", map[string]string{"j": "", "{client_addr}": "127.0.0.1"}},
				{"helo", map[string]string{"{daemon_name}": "", "v": "Test MTA 9.9"}},
				{"mail", map[string]string{"{mail_addr}": "alice@test.example", "{mail_mailer}": "smtp"}},
				{"rcpt", map[string]string{"{rcpt_addr}": "bob+macros-configured@test.example", "i": ""}},
				{"data", map[string]string{"{mail_host}": "test.example"}},
				{"eoh", map[string]string{"{rcpt_host}": "test.example"}},
				{"eom", map[string]string{"{client_port}": "", "{cert_issuer}": "CN=Test CA"}},
			}
			// No value ({cert_subject}, {auth_type}), or in no list.
			never := []string{"{cert_subject}", "{auth_type}", "{unsent}", "_", "{daemon_addr}", "{client_name}", "{rcpt_mailer}", "{auth_author}"}
			checkMacroRecords(t, configured.Records(t), want, never)
		})

		t.Run("default lists", func(t *testing.T) {
			recs := defaults.Records(t)
			checkMacroRecords(t, recs, []stageMacros{
				{"connect", map[string]string{"j": "", "{client_addr}": "127.0.0.1", "{daemon_name}": "", "_": ""}},
				{"helo", nil},
				{"mail", map[string]string{"{mail_addr}": "alice@test.example"}},
				{"rcpt", map[string]string{"{rcpt_addr}": "bob+macros-defaults@test.example", "{rcpt_host}": "test.example", "i": ""}},
				{"data", nil}, {"eoh", nil}, {"eom", nil},
			}, []string{"{cert_subject}", "{cert_issuer}", "{auth_author}", "{mail_mailer}", "{rcpt_mailer}", "{auth_type}", "{tls_version}", "{unsent}"})
			if len(recs) > 0 {
				if got := recs[0].Macros["v"]; !strings.HasPrefix(got, "OpenSMTPD ") || len(got) <= len("OpenSMTPD ") {
					t.Errorf("v at connect = %q, want \"OpenSMTPD <version>\"", got)
				}
			}
		})
		s.Healthy(t)
	})
}

// checkMacroRecords checks one session's records: one per stage, in
// order; each stage's macros there with their values, and not at any
// earlier stage; the never ones nowhere.
func checkMacroRecords(t *testing.T, recs []harness.MacroRecord, want []stageMacros, never []string) {
	t.Helper()
	var stages []string
	for _, r := range recs {
		stages = append(stages, r.Stage)
	}
	var wantStages []string
	for _, w := range want {
		wantStages = append(wantStages, w.stage)
	}
	if strings.Join(stages, " ") != strings.Join(wantStages, " ") {
		t.Fatalf("milter callbacks %q, want %q (records %+v)", stages, wantStages, recs)
	}
	for i, w := range want {
		got := recs[i].Macros
		for name, value := range w.macros {
			v, ok := got[name]
			switch {
			case !ok:
				t.Errorf("%s: %s not sent; the milter saw %v", w.stage, name, got)
			case value == "" && v == "", value != "" && v != value:
				t.Errorf("%s: %s = %q, want %q", w.stage, name, v, value)
			}
			for _, earlier := range recs[:i] {
				if _, ok := earlier.Macros[name]; ok {
					t.Errorf("%s is in the %s list but the milter saw it at %s already: %v", name, w.stage, earlier.Stage, earlier.Macros)
				}
			}
		}
	}
	for _, r := range recs {
		for _, name := range never {
			if v, ok := r.Macros[name]; ok {
				t.Errorf("%s: %s = %q was sent; it has no value or is in no list", r.Stage, name, v)
			}
		}
	}
	if t.Failed() {
		t.Logf("the milter's records: %+v", recs)
	}
}
