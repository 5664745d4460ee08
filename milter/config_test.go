package milter

import (
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig("inet:127.0.0.1:8891{default_action=accept, command_timeout=10s, content_timeout=120, connect_timeout=2s, protocol=4}", DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Endpoints) != 1 || c.Endpoints[0].Address != "127.0.0.1:8891" || c.DefaultAction != "accept" ||
		c.Options.CommandTimeout != 10*time.Second || c.Options.ContentTimeout != 120*time.Second ||
		c.Options.ConnectTimeout != 2*time.Second || c.Options.Version != 4 {
		t.Errorf("parsed %+v", c)
	}
	c, err = ParseConfig("inet:10.0.0.1:11332, inet:11332@10.0.0.2", DefaultOptions)
	if err != nil || len(c.Endpoints) != 2 || c.Endpoints[1].Address != "10.0.0.2:11332" || c.Options != DefaultOptions {
		t.Errorf("pool: %+v %v", c, err)
	}
	c, err = ParseConfig("inet:1{eom_timeout=20m, max_modifications=500, max_modification_bytes=8M}", DefaultOptions)
	if err != nil || c.Options.EOMTimeout != 20*time.Minute || c.Options.MaxModifications != 500 || c.Options.MaxModificationBytes != 8<<20 ||
		c.Options.ContentTimeout != DefaultOptions.ContentTimeout {
		t.Errorf("end-of-message bounds: %+v %v", c.Options, err)
	}
}

// TestParseConfigNotations: Postfix main.cf's braces around the whole and
// the endpoint followed by braces give the same milter, pools included.
func TestParseConfigNotations(t *testing.T) {
	one := []Spec{{Network: "tcp4", Address: "127.0.0.1:8891"}}
	two := []Spec{{Network: "tcp4", Address: "10.0.0.1:11332"}, {Network: "unix", Address: "/run/rspamd.sock"}}
	for _, c := range []struct {
		forms     []string
		endpoints []Spec
		action    string
		command   time.Duration
		connect   time.Duration
	}{
		{[]string{
			"inet:127.0.0.1:8891",
			"{ inet:127.0.0.1:8891 }",
			"{inet:127.0.0.1:8891}",
			"  inet:127.0.0.1:8891  ",
		}, one, "", DefaultOptions.CommandTimeout, DefaultOptions.ConnectTimeout},
		{[]string{
			"{ inet:127.0.0.1:8891, connect_timeout=10s, default_action=accept }",
			"{ inet:127.0.0.1:8891 connect_timeout=10 default_action=accept }",
			"{ inet:127.0.0.1:8891, connect_timeout = 10s, default_action = accept }",
			"inet:127.0.0.1:8891{connect_timeout=10s, default_action=accept}",
			"inet:127.0.0.1:8891{ connect_timeout=10, default_action=accept }",
			"inet:8891@127.0.0.1{connect_timeout=10s,default_action=accept}",
		}, one, "accept", DefaultOptions.CommandTimeout, 10 * time.Second},
		{[]string{
			"{ inet:10.0.0.1:11332, unix:/run/rspamd.sock, command_timeout=5s }",
			"{ inet:10.0.0.1:11332 unix:/run/rspamd.sock command_timeout=5 }",
			"inet:10.0.0.1:11332,unix:/run/rspamd.sock{command_timeout=5s}",
			"inet:10.0.0.1:11332, /run/rspamd.sock{command_timeout=5s}",
		}, two, "", 5 * time.Second, DefaultOptions.ConnectTimeout},
	} {
		for _, form := range c.forms {
			got, err := ParseConfig(form, DefaultOptions)
			if err != nil {
				t.Errorf("%q: %v", form, err)
				continue
			}
			if !reflect.DeepEqual(got.Endpoints, c.endpoints) || got.DefaultAction != c.action ||
				got.Options.CommandTimeout != c.command || got.Options.ConnectTimeout != c.connect {
				t.Errorf("%q: endpoints %v, action %q, command %v, connect %v; want %v, %q, %v, %v", form,
					got.Endpoints, got.DefaultAction, got.Options.CommandTimeout, got.Options.ConnectTimeout,
					c.endpoints, c.action, c.command, c.connect)
			}
		}
	}
}

// TestParseConfigErrors: every error names the spec as written, and the
// setting or endpoint that is wrong.
func TestParseConfigErrors(t *testing.T) {
	for _, c := range []struct{ spec, names string }{
		{"inet:1{eom_timeout=0}", "eom_timeout=0"},
		{"inet:1{max_modifications=0}", "max_modifications=0"},
		{"inet:1{max_modifications=-3}", "max_modifications=-3"},
		{"inet:1{max_modifications=1x}", "max_modifications=1x"},
		{"inet:1{max_modification_bytes=0}", "max_modification_bytes=0"},
		{"inet:1{max_modification_bytes=12T}", "max_modification_bytes=12T"},
		{"inet:1{max_modifications=99999999999}", "max_modifications=99999999999"},
		{"inet:1{default_action=drop}", "default_action=drop"},
		{"inet:1{command_timeout=x}", "command_timeout=x"},
		{"inet:1{command_timeout=-1s}", "command_timeout=-1s"},
		{"inet:1{command_timeout=-5}", "command_timeout=-5"},
		{"inet:1{protocol=7}", "protocol=7"},
		{"inet:1{protocol=x}", "protocol=x"},
		{"inet:1{nonsense=1}", "nonsense=1"},
		{"inet:1{default_action}", `setting "default_action"`},
		{"inet:1{default_action=}", `setting "default_action="`},
		{"inet:1{default_action=accept", "one {...} at the end"},
		{"inet:1{a=b}{c=d}", "one {...} at the end"},
		{"inet:1,bogus:2", `"bogus:2"`},
		{"", "want unix:/path"},
		{"{ inet:1, default_action=drop }", "default_action=drop"},
		{"{ inet:1, command_timeout=0 }", "command_timeout=0"},
		{"{ inet:1, nonsense=1 }", "nonsense=1"},
		{"{ inet:1, default_action }", `setting "default_action"`},
		{"{ inet:1, default_action=accept", "'}' at the end"},
		{"{ inet:1 } x", "'}' at the end"},
		{"{ inet:1 }{default_action=accept}", "'}' at the end"},
		{"{ }", "no endpoint"},
		{"{ default_action=accept }", "no endpoint"},
		{"{ inet:1, default_action=accept, inet:2 }", `endpoint "inet:2" after the settings`},
		{"{ tcp:1, default_action=accept }", `"tcp:1"`},
	} {
		got, err := ParseConfig(c.spec, DefaultOptions)
		if err == nil {
			t.Errorf("ParseConfig(%q) = %+v, want an error", c.spec, got)
			continue
		}
		if prefix := "milter " + strconv.Quote(c.spec) + ": "; !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), c.names) {
			t.Errorf("ParseConfig(%q): %q, want it to start %q and name %q", c.spec, err, prefix, c.names)
		}
	}
}

func TestParseDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{"30": 30 * time.Second, "30s": 30 * time.Second, "2m": 2 * time.Minute,
		"1m30s": 90 * time.Second, " 5 ": 5 * time.Second, "250ms": 250 * time.Millisecond} {
		if got, err := ParseDuration(in); err != nil || got != want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1", "0s", "-3s", "x", "10 s", "1d", "99999999999999999"} {
		if got, err := ParseDuration(in); err == nil || !strings.Contains(err.Error(), "duration ") {
			t.Errorf("ParseDuration(%q) = %v, %v; want an error naming the duration", in, got, err)
		}
	}
}

// Macro settings, whose values hold spaces and braced names, read the
// same in main.cf's braces as in the endpoint-then-braces notation.
func TestMacroSettingsInBothNotations(t *testing.T) {
	a, err := ParseConfig("{ inet:127.0.0.1:1, connect_macros=j {client_addr}, macro_defaults={auth_type}=none i=x, macro_v=Test MTA 2, default_action=accept }", DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	b, err := ParseConfig("inet:127.0.0.1:1{connect_macros=j {client_addr}, macro_defaults={auth_type}=none i=x, macro_v=Test MTA 2, default_action=accept}", DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(a.Options, b.Options) || a.DefaultAction != b.DefaultAction {
		t.Errorf("the notations differ:\n%+v\n%+v", a, b)
	}
	m := a.Options.Macros
	if m == nil || !reflect.DeepEqual(m.Lists.Connect, []string{"j", "{client_addr}"}) || m.V != "Test MTA 2" ||
		m.Defaults["{auth_type}"] != "none" || m.Defaults["i"] != "x" || a.DefaultAction != "accept" {
		t.Errorf("macro settings read as %+v, default action %q", m, a.DefaultAction)
	}
	for _, bad := range []string{"{ inet:127.0.0.1:1, connect_macros=j {{client_addr}} }", "inet:127.0.0.1:1{connect_macros=j {client_addr}"} {
		if _, err := ParseConfig(bad, DefaultOptions); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
