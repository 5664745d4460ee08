package config

import (
	"os"
	"reflect"
	"strings"
	"testing"

	"github.com/filter-milter/filter-milter/milter"
)

// TestReloadReadsTheFileUnderTheFlags: reading the settings again after
// the file changed takes the file's new values, except those the command
// line gives, as at start.
func TestReloadReadsTheFileUnderTheFlags(t *testing.T) {
	path := writeConfig(t, "default_action = \"accept\"\ncommand_timeout = 10\nmilters = [\"inet:127.0.0.1:8891\"]\n")
	args := []string{"-config", path, "-command-timeout", "7s"}
	old, _, err := parseArgs(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("default_action = \"reject\"\ncommand_timeout = 20\nhostname = \"mx.example\"\nmilters = [\"inet:127.0.0.1:8891\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s, _, err := parseArgs(t, args...)
	if err != nil {
		t.Fatal(err)
	}
	if s.DefaultAction != "reject" || s.CommandTimeout.Seconds() != 7 || s.Hostname != "mx.example" {
		t.Errorf("reloaded: default action %q, command timeout %v, hostname %q; want reject, 7s (the flag), mx.example",
			s.DefaultAction, s.CommandTimeout, s.Hostname)
	}
	if got, want := Diff(old, s), []string{"default-action", "hostname"}; !reflect.DeepEqual(got, want) {
		t.Errorf("Diff = %q, want %q", got, want)
	}
	if got := Diff(s, s); len(got) != 0 {
		t.Errorf("Diff of equal settings = %q", got)
	}
}

// TestDiffCoversEveryKey: each key a file can set shows in Diff when
// only it changes.
func TestDiffCoversEveryKey(t *testing.T) {
	base, _, err := parseArgs(t, "-milter", "inet:1")
	if err != nil {
		t.Fatal(err)
	}
	other, _, err := parseArgs(t, "-config", writeConfig(t, macroConfigForDiff+goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	for name, copyFrom := range settingFlags {
		s := base
		copyFrom(&s, &other)
		if got := Diff(base, s); !reflect.DeepEqual(got, []string{name}) {
			t.Errorf("%s changed alone: Diff = %q (is it set in the test's file?)", name, got)
		}
	}
}

// macroConfigForDiff goes before goodConfig: after a [[milter]] header a key is that table's.
// It holds the top-level keys goodConfig does not set.
const macroConfigForDiff = `
trace_clients = ["192.0.2.7"]
trace_content = true
connect_macros = "j"
helo_macros = "j"
mail_macros = "j"
rcpt_macros = "j"
data_macros = "j"
eoh_macros = "j"
eom_macros = "j"
macro_defaults = "x=1"
macro_v = "other"
`

func TestKeepRestartKeys(t *testing.T) {
	running, _, _ := parseArgs(t, "-milter", "inet:1", "-metrics-listen", "127.0.0.1:9465")
	s, _, _ := parseArgs(t, "-milter", "inet:1", "-metrics-listen", "127.0.0.1:9999", "-hostname", "mx")
	if kept := s.KeepRestartKeys(running); !reflect.DeepEqual(kept, []string{"metrics-listen"}) || s.MetricsListen != "127.0.0.1:9465" {
		t.Errorf("kept %q, metrics-listen %q; want [metrics-listen], the running 127.0.0.1:9465", kept, s.MetricsListen)
	}
	if got := Diff(running, s); !reflect.DeepEqual(got, []string{"hostname"}) {
		t.Errorf("after KeepRestartKeys, Diff = %q, want [hostname]", got)
	}
	if kept := s.KeepRestartKeys(running); len(kept) != 0 {
		t.Errorf("nothing to keep: kept %q", kept)
	}
}

func milterConfigs(t *testing.T, specs ...string) []milter.Config {
	t.Helper()
	var out []milter.Config
	for _, sp := range specs {
		c, err := milter.ParseConfig(sp, milter.DefaultOptions)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// TestReusePools: a milter whose configuration is unchanged keeps its
// pool (and with it what the pool knows of its endpoints); a changed or
// new one gets a new pool; the changes are named.
func TestReusePools(t *testing.T) {
	running, _ := ReusePools(milterConfigs(t, "inet:127.0.0.1:1", "inet:127.0.0.1:2", "inet:127.0.0.1:3"), nil, nil)
	// Each call parses again: equal configurations, not the same values.
	pools, ch := ReusePools(milterConfigs(t, "inet:127.0.0.1:2", "inet:127.0.0.1:1", "inet:127.0.0.1:4"), running, nil)
	if pools[0] != running[1] || pools[1] != running[0] || pools[2] == running[2] {
		t.Errorf("unchanged milters must keep their pools, in the new order")
	}
	if !reflect.DeepEqual(ch, MilterChanges{Added: []string{"inet:127.0.0.1:4"}, Removed: []string{"inet:127.0.0.1:3"}, Reordered: true}) {
		t.Errorf("changes %+v", ch)
	}

	// The same name with another setting: changed, a new pool.
	named := func(action string) []milter.Config {
		cs := milterConfigs(t, "inet:127.0.0.1:1{default_action="+action+"}")
		cs[0].Name = "dkim"
		return cs
	}
	running, _ = ReusePools(named("accept"), nil, nil)
	pools, ch = ReusePools(named("reject"), running, nil)
	if pools[0] == running[0] || !reflect.DeepEqual(ch, MilterChanges{Changed: []string{"dkim"}}) {
		t.Errorf("a changed setting: same pool %v, changes %+v", pools[0] == running[0], ch)
	}
	pools, ch = ReusePools(named("accept"), running, nil)
	if pools[0] != running[0] || !ch.None() {
		t.Errorf("nothing changed: same pool %v, changes %+v", pools[0] == running[0], ch)
	}
}

// TestReloadErrorsNameFileLineKey: every way a file can be wrong is
// reported with the file, and with the line and key when it has them.
func TestReloadErrorsNameFileLineKey(t *testing.T) {
	for _, c := range []struct{ text, want string }{
		{"default_action = \"drop\"\n", ":1: key default_action"},
		{"milters = [\"inet:1\"]\ncommand_timeout = \"soon\"\n", ":2: key command_timeout"},
		{"milters = [\"inet:1\"]\nbogus = 1\n", ":2: unknown key bogus"},
		{"milters = [\"inet:1\"]\nbuffer_limit = \"2G\"\n", ":2: key buffer_limit"},
		{"milters = [\"inet:1\"]\n[[milter]]\nsocket = \"tcp:1\"\n", ":3: key milter.socket"},
		{"[[milter]]\nname = \"x\"\n", ":1: [[milter]] #1: no socket"},
		{"milters = [\"inet:1{default_action=drop}\"]\n", ":1: key milters"},
		{"milters = [\n", ":"},
	} {
		path := writeConfig(t, c.text)
		_, _, err := parseArgs(t, "-config", path)
		if err == nil || !strings.HasPrefix(err.Error(), path+c.want) {
			t.Errorf("%q: error %v, want it to start %q", c.text, err, path+c.want)
		}
	}
}
