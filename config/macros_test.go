package config

import (
	"reflect"
	"strings"
	"testing"

	"github.com/filter-milter/filter-milter/milter"
)

const macroConfig = `
connect_macros = "j {daemon_name}, v"
helo_macros = []
mail_macros = ["i", "{mail_addr}", "mail_mailer"]
macro_defaults = { "{mail_mailer}" = "smtp", "{auth_type}" = "none given" }
macro_v = "Example MTA 1.0"

[[milter]]
name = "own"
socket = "inet:127.0.0.1:8891"
rcpt_macros = "{rcpt_addr}"
macro_defaults = "i=none"

[[milter]]
name = "global"
socket = "inet:127.0.0.1:8892"
`

func TestMacroSettingsFromTheFile(t *testing.T) {
	_, ms, err := parseArgs(t, "-config", writeConfig(t, macroConfig))
	if err != nil {
		t.Fatal(err)
	}
	global := ms[1].Options.Macros
	want := milter.MacroConfig{
		Lists: milter.MacroLists{
			Connect: []string{"j", "{daemon_name}", "v"},
			Helo:    []string{},
			Mail:    []string{"i", "{mail_addr}", "{mail_mailer}"},
			Rcpt:    milter.DefaultMacroLists.Rcpt, Data: milter.DefaultMacroLists.Data,
			EOH: milter.DefaultMacroLists.EOH, EOM: milter.DefaultMacroLists.EOM,
		},
		Defaults: map[string]string{"{mail_mailer}": "smtp", "{auth_type}": "none given"},
		V:        "Example MTA 1.0",
	}
	if global == nil || !reflect.DeepEqual(*global, want) {
		t.Fatalf("top-level macro settings\n got %+v\nwant %+v", global, want)
	}
	own := ms[0].Options.Macros
	want.Lists.Rcpt = []string{"{rcpt_addr}"}
	want.Defaults = map[string]string{"i": "none"}
	if own == nil || !reflect.DeepEqual(*own, want) {
		t.Fatalf("[[milter]] macro settings\n got %+v\nwant %+v", own, want)
	}
}

func TestMacroFlagsOverrideTheFile(t *testing.T) {
	_, ms, err := parseArgs(t, "-config", writeConfig(t, macroConfig), "-connect-macros", "{client_addr}",
		"-macro-defaults", "{xy}=1", "-macro-v", "Flag MTA")
	if err != nil {
		t.Fatal(err)
	}
	m := ms[1].Options.Macros
	if !reflect.DeepEqual(m.Lists.Connect, []string{"{client_addr}"}) || !reflect.DeepEqual(m.Lists.Mail, []string{"i", "{mail_addr}", "{mail_mailer}"}) ||
		!reflect.DeepEqual(m.Defaults, map[string]string{"{xy}": "1"}) || m.V != "Flag MTA" {
		t.Errorf("flags over file: %+v", m)
	}
	_, ms, err = parseArgs(t, "-milter", "inet:1{eom_macros=i v}", "-eom-macros", "{queue}")
	if err != nil {
		t.Fatal(err)
	}
	if m := ms[0].Options.Macros; !reflect.DeepEqual(m.Lists.EOM, []string{"i", "v"}) || !reflect.DeepEqual(m.Lists.Connect, milter.DefaultMacroLists.Connect) {
		t.Errorf("-milter's own list over the flag: %+v", m)
	}
}

func TestMacroSettingErrors(t *testing.T) {
	for text, wantErr := range map[string]string{
		"connect_macros = \"{daemon name}\"\n":              `:1: key connect_macros`,
		"mail_macros = [\"i {x}\"]\n":                       `:1: key mail_macros`,
		"macro_defaults = { \"{a}\" = 1 }\n":                `:1: key macro_defaults`,
		"macro_defaults = \"a\"\n":                          `:1: key macro_defaults`,
		"macro_v = \"\"\n":                                  `:1: key macro_v`,
		"[[milter]]\nsocket = \"inet:1\"\neom_macros = 3\n": `:3: key milter.eom_macros`,
	} {
		_, _, err := parseArgs(t, "-config", writeConfig(t, text))
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%q: error %v, want one with %q", text, err, wantErr)
		}
	}
	if _, _, err := parseArgs(t, "-milter", "inet:1", "-rcpt-macros", "{a"); err == nil {
		t.Errorf("-rcpt-macros {a: no error")
	}
}

// TestFileMacroKeysFollowTheTable: fileMacros' list fields are decoded
// under the keys of milter.MacroListSettings, in its order (apply relies
// on the order).
func TestFileMacroKeysFollowTheTable(t *testing.T) {
	ft := reflect.TypeOf(fileMacros{})
	for i, s := range milter.MacroListSettings {
		if tag := ft.Field(i).Tag.Get("toml"); tag != s.Key {
			t.Errorf("fileMacros field %d is %q, want %q", i, tag, s.Key)
		}
	}
}
