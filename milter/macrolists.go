package milter

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// This file is what the postmaster configures about macros, as Postfix
// does (postconf(5): milter_connect_macros ... milter_end_of_data_macros,
// milter_macro_defaults, milter_macro_v): the list of names sent at each
// stage, values for the macros a session has none for, and the value of
// v. What goes on the wire at each stage is decided in one place, by
// go-milter's sendMacros reading a milterMacros: of the stage's list (the
// milter's own when it asked for one, else the configured one), every
// macro that has a value, and no other.

// MacroConfig is one milter's macro settings.
type MacroConfig struct {
	Lists MacroLists
	// Defaults are values for macros the session has no value for
	// (Postfix's milter_macro_defaults); keys are canonical names
	// (CanonicalMacroName).
	Defaults map[string]string
	// V is the value of the v macro (Postfix's milter_macro_v); "" keeps
	// the gateway's "OpenSMTPD <version>".
	V string
}

// MacroLists are the macro names sent at each stage unless the milter
// asks for its own list for that stage in negotiation. An empty list
// sends nothing at that stage.
type MacroLists struct {
	Connect, Helo, Mail, Rcpt, Data, EOH, EOM []string
}

// DefaultMacroLists are Postfix's default lists (postconf -d,
// Postfix 3.x) without the macros OpenSMTPD cannot supply ({cert_subject},
// {cert_issuer}, {auth_author}, {mail_mailer}, {rcpt_mailer}: smtpd's
// reports carry no client certificate, no AUTH= parameter's author and
// no mailer; nor i at MAIL, see below), plus, at connect, the client and interface macros
// filter-milter has always sent there (Postfix makes them available to a
// milter that asks; Sendmail sends {if_addr} by default).
var DefaultMacroLists = MacroLists{
	Connect: []string{MacroMTAName, MacroDaemonName, MacroDaemonAddr, MacroDaemonPort, MacroIfAddr,
		MacroMTAVersion, MacroClientInfo, MacroClientAddr, MacroClientPort, MacroClientName, MacroClientPTR},
	Helo: []string{MacroTLSVersion, MacroCipher, MacroCipherBits},
	Mail: []string{MacroAuthType, MacroAuthAuthen, MacroMailAddr, MacroMailHost},
	Rcpt: []string{MacroQueueID, MacroRcptAddr, MacroRcptHost},
	// OpenSMTPD reports the queue id (tx-begin) only after its MAIL
	// filter request, so it is not in the MAIL list; Postfix sends it
	// again at DATA, end of headers and end of message.
	Data: []string{MacroQueueID},
	EOH:  []string{MacroQueueID},
	EOM:  []string{MacroQueueID},
}

// byStage gives the lists indexed by SMFIM_* stage.
func (l MacroLists) byStage() [numMacroStages][]string {
	return [numMacroStages][]string{
		stageConnect: l.Connect, stageHelo: l.Helo, stageMail: l.Mail, stageRcpt: l.Rcpt,
		stageData: l.Data, stageEOH: l.EOH, stageEOM: l.EOM,
	}
}

// wire gives each list as the negotiation answer carries it.
func (l MacroLists) wire() (w [numMacroStages]string) {
	for s, names := range l.byStage() {
		w[s] = strings.Join(names, " ")
	}
	return w
}

// CanonicalMacroName is the name the gateway keeps a macro under: a
// one-character name bare ("i", also for "{i}"), a longer one in braces
// ("{daemon_name}", also for "daemon_name"). libmilter's smfi_getsymval
// finds a one-character macro under either spelling, and a longer one
// only in braces, so nothing a milter can look up is lost.
func CanonicalMacroName(name string) (string, error) {
	inner, braced := name, false
	if strings.HasPrefix(name, "{") || strings.HasSuffix(name, "}") {
		if len(name) < 2 || name[0] != '{' || name[len(name)-1] != '}' {
			return "", fmt.Errorf("macro name %q: unbalanced braces", name)
		}
		inner, braced = name[1:len(name)-1], true
	}
	switch {
	case inner == "":
		return "", fmt.Errorf("macro name %q: empty", name)
	case len(inner) == 1:
		// Sendmail's one-character names include punctuation ("_", "&").
		if inner[0] <= ' ' || inner[0] > '~' || strings.ContainsAny(inner, "{},=") {
			return "", fmt.Errorf("macro name %q: not a printable character", name)
		}
		return inner, nil
	}
	for _, r := range inner {
		if !(r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			return "", fmt.Errorf("macro name %q: want letters, digits and _ in a long name", name)
		}
	}
	if braced {
		return name, nil // no copy: GetEx calls this for every name of every stage
	}
	return "{" + inner + "}", nil
}

// ParseMacroList reads a list of macro names separated by spaces or
// commas, as Postfix writes them ("i {auth_type}, {mail_addr}"), into
// canonical names, without duplicates. An empty string is an empty list.
func ParseMacroList(s string) ([]string, error) {
	out := []string{}
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
		name, err := CanonicalMacroName(f)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	return out, nil
}

// ParseMacroDefaults reads name=value pairs separated by spaces or commas
// ("{auth_type}=none, {mail_mailer}=smtp"), as Postfix's
// milter_macro_defaults; a value with spaces or commas needs the
// configuration file.
func ParseMacroDefaults(s string) (map[string]string, error) {
	out := map[string]string{}
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
		k, v, ok := strings.Cut(f, "=")
		if !ok || v == "" {
			return nil, fmt.Errorf("macro default %q: want name=value", f)
		}
		if err := SetMacroDefault(out, k, v); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// SetMacroDefault adds one macro_defaults entry under the canonical name.
func SetMacroDefault(defaults map[string]string, name, value string) error {
	n, err := CanonicalMacroName(name)
	if err != nil {
		return err
	}
	if value == "" {
		return fmt.Errorf("macro default %s: empty value (a macro with no value is not sent)", name)
	}
	defaults[n] = value
	return nil
}

// FormatMacroDefaults writes defaults back as ParseMacroDefaults reads
// them, sorted by name (values with spaces quoted, for display only).
func FormatMacroDefaults(defaults map[string]string) string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(defaults)) {
		v := defaults[k]
		if strings.ContainsAny(v, " ,\t") {
			v = fmt.Sprintf("%q", v)
		}
		out = append(out, k+"="+v)
	}
	return strings.Join(out, ", ")
}

// milterMacros is what go-milter reads when it sends one milter the
// macros of a stage: the SMTP session's value, else the milter's
// macro_defaults; v is macro_v when set. A macro neither has is not sent
// (go-milter's sendMacros skips a name GetEx does not find), as Postfix
// sends only macros with a value.
type milterMacros struct {
	session *Macros // nil: the session has no values
	cfg     *MacroConfig
}

func (m milterMacros) GetEx(name string) (string, bool) {
	canon, err := CanonicalMacroName(name)
	if err != nil {
		canon = name // a name the milter asked for that no one sets
	}
	if canon == MacroMTAVersion && m.cfg.V != "" {
		return m.cfg.V, true
	}
	if m.session != nil {
		if v, ok := m.session.GetEx(canon); ok {
			return v, true
		}
	}
	v, ok := m.cfg.Defaults[canon]
	return v, ok
}

func (m milterMacros) Get(name string) string {
	v, _ := m.GetEx(name)
	return v
}

// orDefaults fills the stages with no list (nil) from DefaultMacroLists.
func (l MacroLists) orDefaults() MacroLists {
	for _, p := range []struct {
		dst *[]string
		def []string
	}{
		{&l.Connect, DefaultMacroLists.Connect}, {&l.Helo, DefaultMacroLists.Helo}, {&l.Mail, DefaultMacroLists.Mail},
		{&l.Rcpt, DefaultMacroLists.Rcpt}, {&l.Data, DefaultMacroLists.Data}, {&l.EOH, DefaultMacroLists.EOH},
		{&l.EOM, DefaultMacroLists.EOM},
	} {
		if *p.dst == nil {
			*p.dst = p.def
		}
	}
	return l
}

// resolved is c with every list set (nil: the default), as a client
// keeps it; c is not changed.
func (c *MacroConfig) resolved() *MacroConfig {
	var r MacroConfig
	if c != nil {
		r = *c
	}
	r.Lists = r.Lists.orDefaults()
	return &r
}

// MacroListSettings are the settings of the lists, in stage order: the
// key (of the configuration file and of a milter's settings; Postfix's
// milter_<stage>_macros), the stage in words, and the list it sets. The
// flags, the file's keys and ParseConfig all read this one table.
var MacroListSettings = [...]struct {
	Key, Stage string
	List       func(*MacroLists) *[]string
}{
	{"connect_macros", "at connect", func(l *MacroLists) *[]string { return &l.Connect }},
	{"helo_macros", "at HELO/EHLO", func(l *MacroLists) *[]string { return &l.Helo }},
	{"mail_macros", "at MAIL FROM", func(l *MacroLists) *[]string { return &l.Mail }},
	{"rcpt_macros", "at each RCPT TO", func(l *MacroLists) *[]string { return &l.Rcpt }},
	{"data_macros", "at DATA", func(l *MacroLists) *[]string { return &l.Data }},
	{"eoh_macros", "at the end of the header", func(l *MacroLists) *[]string { return &l.EOH }},
	{"eom_macros", "at the end of the message", func(l *MacroLists) *[]string { return &l.EOM }},
}

const macroSettingNames = "connect_macros, helo_macros, mail_macros, rcpt_macros, data_macros, eoh_macros, eom_macros, macro_defaults or macro_v"

// macroListSetting is the list of l that setting k sets; nil when k is
// not a list setting.
func macroListSetting(l *MacroLists, k string) *[]string {
	for _, s := range MacroListSettings {
		if s.Key == k {
			return s.List(l)
		}
	}
	return nil
}

func isMacroListSetting(k string) bool { return macroListSetting(&MacroLists{}, k) != nil }

// setMacroSetting applies one per-milter macro setting to a copy of
// o.Macros (which other milters may share); known is false for a
// setting that is not about macros.
func (o *Options) setMacroSetting(k, v string) (known bool, err error) {
	mc := MacroConfig{}
	if o.Macros != nil {
		mc = *o.Macros
	}
	switch {
	case isMacroListSetting(k):
		list, err := ParseMacroList(v)
		if err != nil {
			return true, err
		}
		*macroListSetting(&mc.Lists, k) = list
	case k == "macro_defaults":
		defaults, err := ParseMacroDefaults(v)
		if err != nil {
			return true, err
		}
		mc.Defaults = defaults
	case k == "macro_v":
		mc.V = v
	default:
		return false, nil
	}
	o.Macros = &mc
	return true, nil
}
