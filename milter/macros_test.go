package milter

import (
	"bytes"
	"encoding/binary"
	"reflect"
	"strings"
	"testing"
)

// macroSession plays one whole transaction (CONNECT to end of message)
// against a scripted milter whose negotiation answer carries lists, and
// returns the SMFIC_MACRO packets written, in order, each as the stage
// code and its name/value pairs.
func macroSession(t *testing.T, opts Options, macros *Macros, lists ...[]byte) []string {
	t.Helper()
	script := optnegReply(0x1ff, 0, lists...)
	for i := 0; i < 6; i++ { // CONNECT HELO MAIL RCPT DATA EOH
		script = append(script, packet('c')...)
	}
	script = append(script, packet('a')...) // end of message
	nc := &recordingConn{scriptConn: scriptConn{r: bytes.NewReader(script)}}
	s, err := NewClient("macros", Spec{Network: "unix", Address: "macros"}, opts, nil).openOn(nc, macros)
	if err != nil {
		t.Fatal(err)
	}
	playEnvelope(t, s)
	if _, err := s.EndOfHeaders(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.End(nil); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range packets(t, nc.written.Bytes()) {
		if p[0] == 'D' {
			got = append(got, strings.ReplaceAll(string(p[1:]), "\x00", "|"))
		}
	}
	return got
}

func sessionMacroValues() *Macros {
	m := NewMacros()
	for k, v := range map[string]string{
		MacroMTAName: "mx.test.example", MacroDaemonName: "smtpd", MacroClientAddr: "192.0.2.1",
		MacroMTAVersion: "OpenSMTPD 7.4.0", MacroQueueID: "Q1", MacroMailAddr: "a@b", MacroRcptAddr: "c@d",
		MacroRcptHost: "d",
	} {
		m.Set(k, v)
	}
	return m
}

// TestConfiguredMacroListsOnTheWire checks what each stage sends: the
// configured list, of which only the macros that have a value (the
// session's, else macro_defaults), v from macro_v, and no packet at all
// for a stage none of whose macros has a value (HELO here: no TLS).
func TestConfiguredMacroListsOnTheWire(t *testing.T) {
	opts := DefaultOptions
	opts.Macros = &MacroConfig{
		Lists: MacroLists{
			Connect: []string{"j", "{client_addr}", "{client_ptr}"},
			Helo:    []string{"{tls_version}"},
			Mail:    []string{"i", "{mail_addr}", "{auth_type}", "{mail_mailer}"},
			Rcpt:    []string{"{rcpt_addr}"},
			Data:    []string{"i"},
			EOH:     []string{"{daemon_name}"},
			EOM:     []string{"i", "v"},
		},
		Defaults: map[string]string{"{mail_mailer}": "smtp", "{never_listed}": "x"},
		V:        "Test MTA 1.0",
	}
	got := macroSession(t, opts, sessionMacroValues())
	want := []string{
		"Cj|mx.test.example|{client_addr}|192.0.2.1|", // {client_ptr}: no value
		"Mi|Q1|{mail_addr}|a@b|{mail_mailer}|smtp|",   // {auth_type}: no value; {mail_mailer} from macro_defaults
		"R{rcpt_addr}|c@d|",
		"Ti|Q1|",
		"N{daemon_name}|smtpd|",
		"Ei|Q1|v|Test MTA 1.0|", // macro_v over the session's v
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("macro packets\n got %q\nwant %q", got, want)
	}
}

// TestMilterListReplacesConfiguredOne: a milter's own list for a stage
// replaces the configured one for that stage only; its names are found
// under either spelling of a one-character name, and macro_defaults and
// the session's v apply to it too.
func TestMilterListReplacesConfiguredOne(t *testing.T) {
	opts := DefaultOptions
	opts.Macros = &MacroConfig{
		Lists:    MacroLists{Rcpt: []string{"{rcpt_addr}"}, EOM: []string{}},
		Defaults: map[string]string{"{rcpt_mailer}": "local"},
	}
	rcptList := binary.BigEndian.AppendUint32(nil, 3) // SMFIM_ENVRCPT
	rcptList = append(rcptList, "{rcpt_host} {i},{rcpt_mailer} {v} {cert_issuer}\x00"...)
	got := macroSession(t, opts, sessionMacroValues(), rcptList)
	want := []string{
		// DefaultMacroLists' connect list, of which what has a value.
		"Cj|mx.test.example|{daemon_name}|smtpd|v|OpenSMTPD 7.4.0|{client_addr}|192.0.2.1|",
		"M{mail_addr}|a@b|",
		"R{rcpt_host}|d|{i}|Q1|{rcpt_mailer}|local|{v}|OpenSMTPD 7.4.0|", // the milter's list; {cert_issuer}: no value
		"Ti|Q1|",
		"Ni|Q1|",
		// EOM: the configured empty list sends nothing.
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("macro packets\n got %q\nwant %q", got, want)
	}
}

func TestParseMacroSettings(t *testing.T) {
	l, err := ParseMacroList("i {auth_type}, {i} daemon_name {_} _ &")
	if want := []string{"i", "{auth_type}", "{daemon_name}", "_", "&"}; err != nil || !reflect.DeepEqual(l, want) {
		t.Errorf("ParseMacroList = %q, %v; want %q", l, err, want)
	}
	if l, err := ParseMacroList(""); err != nil || l == nil || len(l) != 0 {
		t.Errorf("an empty list: %#v, %v; want an empty, non-nil list (send nothing)", l, err)
	}
	for _, bad := range []string{"{}", "{i", "i}", "{a b}", "{mail-addr}", "é", "{x=y}"} {
		if _, err := ParseMacroList(bad); err == nil {
			t.Errorf("ParseMacroList(%q): no error", bad)
		}
	}
	d, err := ParseMacroDefaults("{auth_type}=none, mail_mailer=smtp {i}=q")
	if want := map[string]string{"{auth_type}": "none", "{mail_mailer}": "smtp", "i": "q"}; err != nil || !reflect.DeepEqual(d, want) {
		t.Errorf("ParseMacroDefaults = %v, %v; want %v", d, err, want)
	}
	for _, bad := range []string{"i", "i=", "{a=b", "=x"} {
		if _, err := ParseMacroDefaults(bad); err == nil {
			t.Errorf("ParseMacroDefaults(%q): no error", bad)
		}
	}
	c, err := ParseConfig("inet:1{connect_macros=j {client_addr}, eom_macros=, macro_defaults={auth_type}=none i=x, macro_v=Test MTA 2}", DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	m := c.Options.Macros
	if !reflect.DeepEqual(m.Lists.Connect, []string{"j", "{client_addr}"}) || m.Lists.EOM == nil || len(m.Lists.EOM) != 0 || m.Lists.Helo != nil ||
		!reflect.DeepEqual(m.Defaults, map[string]string{"{auth_type}": "none", "i": "x"}) || m.V != "Test MTA 2" {
		t.Errorf("per-milter macro settings: %+v", m)
	}
	if DefaultOptions.Macros != nil {
		t.Errorf("ParseConfig changed DefaultOptions.Macros: %+v", DefaultOptions.Macros)
	}
	for _, bad := range []string{"inet:1{helo_macros={x}", "inet:1{macro_defaults=i}", "inet:1{macro_v=}"} {
		if _, err := ParseConfig(bad, DefaultOptions); err == nil {
			t.Errorf("ParseConfig(%q): no error", bad)
		}
	}
}

// TestMacroPlan checks what check reports for each stage: the list sent,
// and for each name where its value comes from, as a session sends it
// (TestConfiguredMacroListsOnTheWire).
func TestMacroPlan(t *testing.T) {
	n := &Negotiation{
		Reply: Masks{Version: 6},
		macros: &MacroConfig{
			Lists: MacroLists{
				Connect: []string{"j", "{rcpt_addr}", "v", "{cert_subject}", "{auth_type}"},
				Helo:    []string{"{tls_version}", "{mail_mailer}"},
			},
			Defaults: map[string]string{"{mail_mailer}": "smtp", "{auth_type}": "none", "{unused}": "u"},
			V:        "Test MTA 1.0",
		},
		Requested: []StageMacros{{Stage: "mail", Macros: []string{"{i}", "{auth_type}"}}},
	}
	plan := n.MacroPlan()
	var stages []string
	for _, p := range plan {
		stages = append(stages, p.Stage)
	}
	if want := []string{"connect", "helo", "mail", "rcpt", "data", "eoh", "eom"}; !reflect.DeepEqual(stages, want) {
		t.Fatalf("stages %q, want %q", stages, want)
	}
	want := map[string][]PlannedMacro{
		"connect": {
			{Name: "j", Source: FromSMTPD},
			{Name: "{rcpt_addr}", Source: NeverSent}, // smtpd has it only from RCPT on
			{Name: "v", Source: FromMacroV, Value: "Test MTA 1.0"},
			{Name: "{cert_subject}", Source: NeverSent},
			{Name: "{auth_type}", Source: FromDefaults, Value: "none"}, // AUTH comes after connect
		},
		"helo": {{Name: "{tls_version}", Source: FromSMTPD, When: "TLS"}, {Name: "{mail_mailer}", Source: FromDefaults, Value: "smtp"}},
		// OpenSMTPD reports the queue id after MAIL.
		"mail": {{Name: "{i}", Source: NeverSent}, {Name: "{auth_type}", Source: FromSMTPD, When: "AUTH", Value: "none"}},
	}
	for _, p := range plan {
		if w, ok := want[p.Stage]; ok && !reflect.DeepEqual(p.Macros, w) {
			t.Errorf("%s: %+v\nwant %+v", p.Stage, p.Macros, w)
		}
		if p.Asked != (p.Stage == "mail") {
			t.Errorf("%s: asked %v", p.Stage, p.Asked)
		}
	}
	if u := n.UnusedMacroDefaults(); !reflect.DeepEqual(u, []string{"{unused}"}) {
		t.Errorf("unused macro_defaults %q", u)
	}
	n.Reply.Version = 3
	if p := n.MacroPlan()[4]; p.Stage != "data" || p.NoStage == "" {
		t.Errorf("version 3 sends no DATA macros; plan %+v", p)
	}
}
