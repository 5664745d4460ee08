package config

import (
	"flag"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/filter-milter/filter-milter/gateway"
	"github.com/filter-milter/filter-milter/milter"
)

// parseArgs parses args with the shared flags, as every command does.
func parseArgs(t *testing.T, args ...string) (Settings, []milter.Config, error) {
	t.Helper()
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	s := Defaults()
	s.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return s, nil, err
	}
	if err := s.ApplyFile(fs); err != nil {
		return s, nil, err
	}
	ms, err := s.MilterConfigs()
	return s, ms, err
}

func writeConfig(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "filter-milter.toml")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

const goodConfig = `# every setting
default_action = "accept"
connect_timeout = "5s"
command_timeout = 20          # seconds, as Postfix writes them
content_timeout = "2m"
eom_timeout = "15m"
max_modifications = 2000
max_modification_bytes = "32M"
shutdown_timeout = "45s"
discard = "junk"
quarantine = "reject"
envelope_change = "ignore"
hostname = "mx.example.org"
daemon_name = "smtpd-in"
log_level = "debug"
metrics_listen = "127.0.0.1:9465"
buffer_limit = "2M"
memory_budget = 134217728
temp_dir = "/tmp"

[[milter]]
name = "dkim"
socket = "inet:127.0.0.1:8891"
default_action = "tempfail"
content_timeout = "10s"
eom_timeout = 90
max_modifications = 50
max_modification_bytes = "1M"

[[milter]]
sockets = ["inet:11332@10.0.0.1", "unix:/run/rspamd/milter.sock"]
connect_timeout = 3
command_timeout = "4s"
protocol = 4
`

func TestConfigFileGood(t *testing.T) {
	path := writeConfig(t, goodConfig)
	s, ms, err := parseArgs(t, "-config", path)
	if err != nil {
		t.Fatal(err)
	}
	want := Settings{
		ConfigPath: path, DefaultAction: "accept", ConnectTimeout: 5 * time.Second, CommandTimeout: 20 * time.Second,
		ContentTimeout: 2 * time.Minute, ShutdownTimeout: 45 * time.Second,
		Policy:   gateway.Policy{Discard: "junk", Quarantine: "reject", Envelope: "ignore"},
		Hostname: "mx.example.org", DaemonName: "smtpd-in", LogLevel: zapcore.DebugLevel, MetricsListen: "127.0.0.1:9465",
	}
	got := s
	got.fileMilters = nil
	if got.ConfigPath != want.ConfigPath || got.DefaultAction != want.DefaultAction || got.ConnectTimeout != want.ConnectTimeout ||
		got.CommandTimeout != want.CommandTimeout || got.ContentTimeout != want.ContentTimeout || got.ShutdownTimeout != want.ShutdownTimeout ||
		got.Policy != want.Policy || got.Hostname != want.Hostname || got.DaemonName != want.DaemonName ||
		got.LogLevel != want.LogLevel || got.MetricsListen != want.MetricsListen || len(got.Milters) != 0 ||
		got.BufferLimit != 2<<20 || got.MemoryBudget != 128<<20 || got.TempDir != "/tmp" {
		t.Errorf("settings\n got %+v\nwant %+v", got, want)
	}
	if len(ms) != 2 {
		t.Fatalf("%d milters, want 2: %+v", len(ms), ms)
	}
	dkim := ms[0]
	if dkim.Name != "dkim" || len(dkim.Endpoints) != 1 || dkim.Endpoints[0] != (milter.Spec{Network: "tcp4", Address: "127.0.0.1:8891"}) ||
		dkim.DefaultAction != "tempfail" || dkim.Options.ConnectTimeout != 5*time.Second || dkim.Options.CommandTimeout != 20*time.Second ||
		dkim.Options.ContentTimeout != 10*time.Second || dkim.Options.Version != 0 ||
		dkim.Options.EOMTimeout != 90*time.Second || dkim.Options.MaxModifications != 50 || dkim.Options.MaxModificationBytes != 1<<20 {
		t.Errorf("first milter: %+v", dkim)
	}
	pool := ms[1]
	if pool.Name != "inet:11332@10.0.0.1,unix:/run/rspamd/milter.sock" || len(pool.Endpoints) != 2 ||
		pool.Endpoints[0] != (milter.Spec{Network: "tcp4", Address: "10.0.0.1:11332"}) ||
		pool.Endpoints[1] != (milter.Spec{Network: "unix", Address: "/run/rspamd/milter.sock"}) ||
		pool.DefaultAction != "" || pool.Options.ConnectTimeout != 3*time.Second || pool.Options.CommandTimeout != 4*time.Second ||
		pool.Options.ContentTimeout != 2*time.Minute || pool.Options.Version != 4 ||
		pool.Options.EOMTimeout != 15*time.Minute || pool.Options.MaxModifications != 2000 || pool.Options.MaxModificationBytes != 32<<20 {
		t.Errorf("pool: %+v", pool)
	}
}

func TestConfigFlagsOverrideFile(t *testing.T) {
	path := writeConfig(t, goodConfig)
	s, ms, err := parseArgs(t, "-default-action", "reject", "-config", path, "-command-timeout", "7s",
		"-hostname", "other.example", "-log-level", "warn", "-metrics-listen", "", "-discard", "reject",
		"--buffer-limit", "512K")
	if err != nil {
		t.Fatal(err)
	}
	if s.DefaultAction != "reject" || s.CommandTimeout != 7*time.Second || s.Hostname != "other.example" ||
		s.LogLevel != zapcore.WarnLevel || s.MetricsListen != "" || s.Policy.Discard != "reject" || s.BufferLimit != 512<<10 {
		t.Errorf("flags did not override the file: %+v", s)
	}
	if gc := s.GatewayConfig(ms, nil); gc.BufferLimit != 512<<10 || gc.MemoryBudget != 128<<20 || gc.TempDir != "/tmp" ||
		gc.DefaultAction != gateway.Reject || gc.Hostname != "other.example" || len(gc.Milters) != 2 {
		t.Errorf("gateway config %+v", gc)
	}
	// What the flags did not set still comes from the file.
	if s.ConnectTimeout != 5*time.Second || s.Policy.Quarantine != "reject" || s.DaemonName != "smtpd-in" {
		t.Errorf("file settings lost: %+v", s)
	}
	// The global command timeout from the flag reaches a milter that does
	// not set its own; its own setting still wins.
	if ms[0].Options.CommandTimeout != 7*time.Second || ms[1].Options.CommandTimeout != 4*time.Second {
		t.Errorf("milter command timeouts %v %v, want 7s 4s", ms[0].Options.CommandTimeout, ms[1].Options.CommandTimeout)
	}

	// -milter on the command line replaces the file's milters.
	_, ms, err = parseArgs(t, "-config", path, "-milter", "inet:127.0.0.1:9999{default_action=reject}")
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0].Endpoints[0].Address != "127.0.0.1:9999" || ms[0].DefaultAction != "reject" ||
		ms[0].Options.ConnectTimeout != 5*time.Second {
		t.Errorf("-milter with -config: %+v", ms)
	}
}

func TestConfigFileErrors(t *testing.T) {
	for _, c := range []struct {
		name, text string
		want       []string // substrings of the error
	}{
		{"unknown top-level key", "default_action = \"accept\"\ndefault_actoin = \"reject\"\n",
			[]string{":2: unknown key default_actoin"}},
		{"unknown key in a milter", "[[milter]]\nsocket = \"inet:127.0.0.1:1\"\n\n[[milter]]\nsocket = \"inet:127.0.0.1:2\"\ncomand_timeout = \"1s\"\n",
			[]string{":6: unknown key milter.comand_timeout"}},
		{"unknown table", "[[milter]]\nsocket = \"inet:127.0.0.1:1\"\n[policy]\ndiscard = \"junk\"\n",
			[]string{":3: unknown key policy", ":4: unknown key policy.discard"}},
		{"bad default action", "\n\ndefault_action = \"drop\"\n",
			[]string{":3: key default_action:", `"drop"`}},
		{"bad per-milter action", "[[milter]]\nsocket = \"inet:127.0.0.1:1\"\ndefault_action = \"bounce\"\n",
			[]string{":3: key milter.default_action:", `"bounce"`}},
		{"bad socket", "[[milter]]\nsocket = \"tcp:127.0.0.1:1\"\n",
			[]string{":2: key milter.socket:", "unknown socket type"}},
		{"bad duration", "command_timeout = \"soon\"\n[[milter]]\nsocket = \"inet:1\"\n",
			[]string{":1: key command_timeout:", `"soon"`}},
		{"negative duration", "[[milter]]\nsocket = \"inet:1\"\ncontent_timeout = -5\n",
			[]string{":3: key milter.content_timeout:", "positive"}},
		{"bad protocol", "[[milter]]\nsocket = \"inet:1\"\nprotocol = 7\n",
			[]string{":3: key milter.protocol:", "2 to 6"}},
		{"zero modifications", "[[milter]]\nsocket = \"inet:1\"\nmax_modifications = 0\n",
			[]string{":3: key milter.max_modifications:", "positive"}},
		{"bad modification bytes", "max_modification_bytes = \"much\"\n", []string{":1: key max_modification_bytes:", `"much"`}},
		{"bad eom timeout", "eom_timeout = \"later\"\n", []string{":1: key eom_timeout:", `"later"`}},
		{"bad log level", "log_level = \"loud\"\n", []string{":1: key log_level:", "loud"}},
		{"bad policy", "quarantine = \"hold\"\n", []string{":1: key quarantine:", "mark, reject, tempfail"}},
		{"bad listen", "metrics_listen = \"9465\"\n", []string{":1: key metrics_listen:", "host:port"}},
		{"wrong type", "hostname = 42\n", []string{":1: key hostname:"}},
		{"bad size", "\nbuffer_limit = \"lots\"\n", []string{":2: key buffer_limit:", `"lots"`}},
		{"negative size", "memory_budget = -1\n", []string{":1: key memory_budget:"}},
		{"buffer over 1G", "\n\nbuffer_limit = \"2G\"\n", []string{":3: key buffer_limit:", "at most 1G"}},
		{"missing temp dir", "temp_dir = \"/nonexistent/spool\"\n", []string{":1: key temp_dir:", "not a directory"}},
		{"syntax", "default_action = \"accept\"\nhostname = mx.example.org\n", []string{":2:"}},
		{"milter without socket", "[[milter]]\nsocket = \"inet:1\"\n\n[[milter]]\nname = \"x\"\n",
			[]string{":4: [[milter]] #2: no socket"}},
		{"socket and sockets", "[[milter]]\nsocket = \"inet:1\"\nsockets = [\"inet:2\"]\n",
			[]string{":1: [[milter]] #1: give socket or sockets, not both"}},
		{"no milter", "hostname = \"mx\"\n", []string{"no milter configured", "[[milter]]"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := writeConfig(t, c.text)
			_, _, err := parseArgs(t, "-config", path)
			if err == nil {
				t.Fatalf("no error for\n%s", c.text)
			}
			msg := err.Error()
			if !strings.Contains(msg, path) {
				t.Errorf("error does not name the file %s: %s", path, msg)
			}
			for _, w := range c.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
		})
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{"1": 1, "512K": 512 << 10, "1M": 1 << 20, "64MiB": 64 << 20, "2G": 2 << 30, "3kB": 3 << 10} {
		if got, err := ParseByteSize(in); err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "0", "-1", "1T", "M", "1.5M", "99999999999G"} {
		if got, err := ParseByteSize(bad); err == nil {
			t.Errorf("ParseByteSize(%q) = %v, want an error", bad, got)
		}
	}
	if s := ByteSize(64 << 20).String(); s != "64M" {
		t.Errorf("String() = %q", s)
	}
}

func TestConfigFileMissing(t *testing.T) {
	_, _, err := parseArgs(t, "-config", "/nonexistent/filter-milter.toml")
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/filter-milter.toml") {
		t.Errorf("missing file: %v", err)
	}
}

func TestLocator(t *testing.T) {
	data := []byte(`a = 1
s = """
x = 2
"""
[t]
"quoted.key" = 3
b.c = 4
[[arr]]
k = 5
[[arr]]
k = 6
`)
	l := newLocator(data)
	for _, c := range []struct {
		key  []string
		nth  []int
		want string
	}{
		{[]string{"a"}, nil, "1"},
		{[]string{"x"}, nil, "?"}, // inside a multi-line string
		{[]string{"t", "quoted.key"}, nil, "6"},
		{[]string{"t", "b", "c"}, nil, "7"},
		{[]string{"t", "b"}, nil, "7"},
		{[]string{"arr"}, []int{1}, "10"},
		{[]string{"arr", "k"}, nil, "9"},
	} {
		if got := l.line(c.key, c.nth...); got != c.want {
			t.Errorf("line(%v, %v) = %s, want %s", c.key, c.nth, got, c.want)
		}
	}
}

func TestEndOfMessageBoundsFromFlags(t *testing.T) {
	s, ms, err := parseArgs(t, "-milter", "inet:127.0.0.1:8891", "-milter", "inet:127.0.0.1:8892{eom_timeout=1m, max_modifications=7, max_modification_bytes=2K}",
		"-eom-timeout", "3m", "-max-modifications", "300", "-max-modification-bytes", "5M")
	if err != nil {
		t.Fatal(err)
	}
	if s.EOMTimeout != 3*time.Minute || s.MaxModifications != 300 || s.MaxModificationBytes != 5<<20 {
		t.Errorf("settings %+v", s)
	}
	if o := ms[0].Options; o.EOMTimeout != 3*time.Minute || o.MaxModifications != 300 || o.MaxModificationBytes != 5<<20 {
		t.Errorf("first milter: %+v", o)
	}
	if o := ms[1].Options; o.EOMTimeout != time.Minute || o.MaxModifications != 7 || o.MaxModificationBytes != 2<<10 {
		t.Errorf("second milter: %+v", o)
	}
	// The defaults are milter.DefaultOptions'.
	_, ms, err = parseArgs(t, "-milter", "inet:127.0.0.1:8891")
	if err != nil {
		t.Fatal(err)
	}
	if o := ms[0].Options; o.EOMTimeout != 10*time.Minute || o.MaxModifications != 10000 || o.MaxModificationBytes != 64<<20 {
		t.Errorf("defaults: %+v", o)
	}
	for _, bad := range [][]string{
		{"-eom-timeout", "0s"}, {"-max-modifications", "0"}, {"-max-modifications", "-1"}, {"-max-modification-bytes", "0"},
		{"-max-modification-bytes", "lots"},
	} {
		if _, _, err := parseArgs(t, append([]string{"-milter", "inet:127.0.0.1:8891"}, bad...)...); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

// TestDurationFlagsTakeSeconds: every duration flag reads "30" as 30
// seconds, as the configuration file does, and refuses what the file
// refuses.
func TestDurationFlagsTakeSeconds(t *testing.T) {
	flags := map[string]func(Settings) time.Duration{
		"-connect-timeout":  func(s Settings) time.Duration { return s.ConnectTimeout },
		"-command-timeout":  func(s Settings) time.Duration { return s.CommandTimeout },
		"-content-timeout":  func(s Settings) time.Duration { return s.ContentTimeout },
		"-eom-timeout":      func(s Settings) time.Duration { return s.EOMTimeout },
		"-shutdown-timeout": func(s Settings) time.Duration { return s.ShutdownTimeout },
	}
	for flag, get := range flags {
		for v, want := range map[string]time.Duration{"30": 30 * time.Second, "30s": 30 * time.Second, "2m": 2 * time.Minute} {
			s, _, err := parseArgs(t, "-milter", "inet:1", flag, v)
			if err != nil || get(s) != want {
				t.Errorf("%s %s: %v, %v; want %v", flag, v, get(s), err, want)
			}
		}
		for _, bad := range []string{"0", "-5", "soon", "0s"} {
			if _, _, err := parseArgs(t, "-milter", "inet:1", flag, bad); err == nil {
				t.Errorf("%s %s accepted", flag, bad)
			}
		}
		// The file takes the same.
		s, _, err := parseArgs(t, "-config", writeConfig(t, strings.TrimPrefix(strings.ReplaceAll(flag, "-", "_"), "_")+" = 30\nmilters = [\"inet:1\"]\n"))
		if err != nil || get(s) != 30*time.Second {
			t.Errorf("file %s = 30: %v, %v", flag, get(s), err)
		}
	}
}

// TestMiltersInBothNotations: -milter and the file's milters list take
// Postfix's main.cf braces and the endpoint-then-braces notation alike,
// and give the same milters, pools included.
func TestMiltersInBothNotations(t *testing.T) {
	forms := [][2]string{
		{"{ inet:127.0.0.1:8891, connect_timeout=10, default_action=accept }", "inet:127.0.0.1:8891{connect_timeout=10s, default_action=accept}"},
		{"{ inet:10.0.0.1:11332, inet:10.0.0.2:11332, command_timeout=5 }", "inet:10.0.0.1:11332,inet:10.0.0.2:11332{command_timeout=5s}"},
	}
	var fromFlags [][]milter.Config
	for _, f := range forms {
		var ms [2][]milter.Config
		for i, spec := range f {
			_, got, err := parseArgs(t, "-milter", spec)
			if err != nil {
				t.Fatalf("-milter %q: %v", spec, err)
			}
			ms[i] = got
		}
		if !reflect.DeepEqual(ms[0][0].Endpoints, ms[1][0].Endpoints) || !reflect.DeepEqual(ms[0][0].Options, ms[1][0].Options) ||
			ms[0][0].DefaultAction != ms[1][0].DefaultAction {
			t.Errorf("%q and %q differ:\n%+v\n%+v", f[0], f[1], ms[0][0], ms[1][0])
		}
		fromFlags = append(fromFlags, ms[0])
	}
	path := writeConfig(t, "command_timeout = 20\nmilters = [\n  \""+forms[0][0]+"\",\n  \""+forms[1][1]+"\",\n]\n")
	_, ms, err := parseArgs(t, "-config", path)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || !reflect.DeepEqual(ms[0].Endpoints, fromFlags[0][0].Endpoints) || ms[0].DefaultAction != "accept" ||
		ms[0].Options.ConnectTimeout != 10*time.Second || ms[0].Options.CommandTimeout != 20*time.Second ||
		!reflect.DeepEqual(ms[1].Endpoints, fromFlags[1][0].Endpoints) || ms[1].Options.CommandTimeout != 5*time.Second {
		t.Errorf("file milters: %+v", ms)
	}
	for text, want := range map[string]string{
		"milters = [\"{ inet:1, default_action=drop }\"]\n":         ":1: key milters: milter \"{ inet:1, default_action=drop }\": default_action=drop",
		"\nmilters = [\"inet:1{comand_timeout=1}\"]\n":              ":2: key milters: milter \"inet:1{comand_timeout=1}\": comand_timeout=1",
		"milters = [\"inet:1\"]\n[[milter]]\nsocket = \"inet:2\"\n": ":1: give milters = [...] or [[milter]] tables, not both",
	} {
		p := writeConfig(t, text)
		if _, _, err := parseArgs(t, "-config", p); err == nil || !strings.Contains(err.Error(), p+want) {
			t.Errorf("%q: %v, want %q", text, err, p+want)
		}
	}
}

func TestMilterScopeInEveryNotation(t *testing.T) {
	want := milter.Scope{
		Clients:           milter.Clients{Nets: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24"), netip.MustParsePrefix("2001:db8::/32")}},
		SkipClients:       milter.Clients{Nets: []netip.Prefix{netip.MustParsePrefix("192.0.2.7/32")}, Local: true},
		SkipAuthenticated: true,
		Evaluation:        true,
	}
	table := writeConfig(t, `[[milter]]
socket = "inet:127.0.0.1:8891"
clients = ["192.0.2.0/24", "2001:db8::/32"]
skip_clients = ["192.0.2.7", "local"]
skip_authenticated = true
evaluation = true
`)
	braces := "clients=192.0.2.0/24|2001:db8::/32, skip_clients=192.0.2.7|local, skip_authenticated=true, evaluation=true"
	list := writeConfig(t, "milters = [\"{ inet:127.0.0.1:8891, "+braces+" }\"]\n")
	for _, args := range [][]string{
		{"-config", table},
		{"-config", list},
		{"-milter", "inet:127.0.0.1:8891{" + braces + "}"},
		{"-milter", "{ inet:127.0.0.1:8891 " + strings.ReplaceAll(braces, ",", "") + " }"},
	} {
		_, ms, err := parseArgs(t, args...)
		if err != nil {
			t.Fatalf("%q: %v", args, err)
		}
		if len(ms) != 1 || !reflect.DeepEqual(ms[0].Scope, want) {
			t.Errorf("%q: scope %+v, want %+v", args, ms[0].Scope, want)
		}
	}
	_, ms, err := parseArgs(t, "-milter", "inet:127.0.0.1:8891")
	if err != nil || !reflect.DeepEqual(ms[0].Scope, milter.Scope{}) {
		t.Errorf("default scope: %+v, %v; want every client, enforcing", ms[0].Scope, err)
	}
}

func TestMilterScopeErrors(t *testing.T) {
	for text, want := range map[string][]string{
		"[[milter]]\nsocket = \"inet:1\"\n\nclients = [\"192.0.2.0/33\"]\n": {":4: key milter.clients:", `"192.0.2.0/33"`},
		"[[milter]]\nsocket = \"inet:1\"\nskip_clients = \"10.0.0.0/8\"\n":  {":3: key milter.skip_clients:", "list"},
		"[[milter]]\nsocket = \"inet:1\"\nclients = [\"10.0.0.1/8\"]\n":     {":3: key milter.clients:", "host bits", "10.0.0.0/8"},
		"[[milter]]\nsocket = \"inet:1\"\nevaluation = \"yes\"\n":           {":3: key milter.evaluation:"},
		"milters = [\"inet:1{clients=10.0.0.0/8|nowhere}\"]\n":              {":1: key milters:", "clients=10.0.0.0/8|nowhere", `"nowhere"`},
	} {
		p := writeConfig(t, text)
		_, _, err := parseArgs(t, "-config", p)
		for _, w := range want {
			if err == nil || !strings.Contains(err.Error(), w) {
				t.Errorf("%q: %v, want it to contain %q", text, err, w)
			}
		}
	}
	for spec, want := range map[string]string{
		"inet:1{skip_authenticated=maybe}": `milter "inet:1{skip_authenticated=maybe}": skip_authenticated=maybe: want true or false`,
		"{ inet:1, clients=fe80::1%eth0 }": `milter "{ inet:1, clients=fe80::1%eth0 }": clients=fe80::1%eth0: "fe80::1%eth0"`,
	} {
		if _, _, err := parseArgs(t, "-milter", spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("-milter %q: %v, want %q", spec, err, want)
		}
	}
}
