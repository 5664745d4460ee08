// Package config is what filter-milter is configured with: the defaults,
// the command-line flags and the TOML configuration file (-config), how
// they combine (flags over file over defaults), and their checks.
package config

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/filter-milter/filter-milter/gateway"
	"github.com/filter-milter/filter-milter/milter"
)

// Settings are everything the filter, check and test commands are
// configured with: defaults, then the configuration file, then the flags
// given on the command line.
type Settings struct {
	ConfigPath      string
	Milters         []string // -milter, in Postfix notation; replaces the file's milters when given
	DefaultAction   string
	ConnectTimeout  time.Duration
	CommandTimeout  time.Duration
	ContentTimeout  time.Duration
	EOMTimeout      time.Duration // the whole of end of message, PROGRESS included (Sendmail's T=E)
	ShutdownTimeout time.Duration
	// What one milter may ask for at one end of message.
	MaxModifications     int
	MaxModificationBytes ByteSize
	Policy               gateway.Policy
	Hostname             string
	DaemonName           string
	LogLevel             zapcore.Level
	MetricsListen        string
	BufferLimit          ByteSize // one message's memory before it spills to a temporary file
	MemoryBudget         ByteSize // the memory of all messages together
	TempDir              string   // where spilled messages go ("": os.TempDir)
	// Macros: the lists per stage, macro_defaults and macro_v (macros.go).
	Macros milter.MacroConfig
	// Trace: trace_clients and trace_content (trace.go).
	Trace gateway.Trace

	fileMilters []fileMilterConfig // [[milter]] tables of the configuration file
	fileSpecs   []string           // its milters = [...] list, in -milter notation
}

func Defaults() Settings {
	return Settings{
		DefaultAction:        "tempfail",
		ConnectTimeout:       milter.DefaultOptions.ConnectTimeout,
		CommandTimeout:       milter.DefaultOptions.CommandTimeout,
		ContentTimeout:       milter.DefaultOptions.ContentTimeout,
		EOMTimeout:           milter.DefaultOptions.EOMTimeout,
		MaxModifications:     milter.DefaultOptions.MaxModifications,
		MaxModificationBytes: ByteSize(milter.DefaultOptions.MaxModificationBytes),
		ShutdownTimeout:      30 * time.Second,
		Policy:               gateway.DefaultPolicy,
		LogLevel:             zapcore.InfoLevel,
		BufferLimit:          1 << 20,
		MemoryBudget:         64 << 20,
		Macros:               milter.MacroConfig{Lists: milter.DefaultMacroLists},
	}
}

// ByteSize is a number of bytes, written plain or with a binary suffix:
// 512K, 1M, 64MiB, 1G.
type ByteSize int64

func ParseByteSize(v string) (ByteSize, error) {
	n, err := milter.ParseSize(v, 1<<62)
	if err != nil {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, with K, M or G for KiB, MiB or GiB", v)
	}
	return ByteSize(n), nil
}

func (b *ByteSize) Set(v string) error {
	n, err := ParseByteSize(v)
	if err == nil {
		*b = n
	}
	return err
}

func (b ByteSize) String() string {
	switch {
	case b > 0 && b%(1<<30) == 0:
		return fmt.Sprintf("%dG", b>>30)
	case b > 0 && b%(1<<20) == 0:
		return fmt.Sprintf("%dM", b>>20)
	case b > 0 && b%(1<<10) == 0:
		return fmt.Sprintf("%dK", b>>10)
	}
	return strconv.FormatInt(int64(b), 10)
}

func checkBufferLimit(b ByteSize) error {
	if b > 1<<30 {
		return fmt.Errorf("%v: at most 1G", b)
	}
	return nil
}

// checkDir accepts "" (the default) or an existing directory.
func checkDir(path string) error {
	if path == "" {
		return nil
	}
	if st, err := os.Stat(path); err != nil || !st.IsDir() {
		return fmt.Errorf("%s: not a directory", path)
	}
	return nil
}

// UnmarshalTOML takes a number of bytes or a string with a suffix.
func (b *ByteSize) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case int64:
		return b.Set(strconv.FormatInt(x, 10))
	case string:
		return b.Set(x)
	}
	return fmt.Errorf("size %v: want a number of bytes or a string such as \"64M\"", v)
}

// Duration is a timeout flag, read as the configuration file and the
// milter settings read one (milter.ParseDuration): "30s", "5m", or a
// plain number of seconds as Postfix writes them.
type Duration time.Duration

func (d *Duration) Set(v string) error {
	t, err := milter.ParseDuration(v)
	if err == nil {
		*d = Duration(t)
	}
	return err
}

func (d *Duration) String() string { return time.Duration(*d).String() }

// StringList is a flag that may be repeated; each value is appended.
type StringList []string

func (l *StringList) String() string     { return strings.Join(*l, " ") }
func (l *StringList) Set(s string) error { *l = append(*l, s); return nil }

// AddFlags registers the flags every command shares. Their values land in
// s; ApplyFile, after fs.Parse, applies the configuration file under them.
func (s *Settings) AddFlags(fs *flag.FlagSet) {
	fs.StringVar(&s.ConfigPath, "config", "", "a configuration file (TOML) with the settings below; flags given on the command line override it")
	fs.Var((*StringList)(&s.Milters), "milter", "a milter, in either of Postfix's notations: '{ inet:host:port, default_action=accept, command_timeout=10 }' or 'inet:host:port{default_action=accept, command_timeout=10}'. Sockets: unix:/path, inet:host:port, inet:port@host, inet6:[addr]:port. Several endpoints of one role form a pool: 'inet:a:11332,inet:b:11332{...}' or '{ inet:a:11332, inet:b:11332, ... }'. Settings: default_action (tempfail, accept, reject), connect_timeout, command_timeout, content_timeout, eom_timeout (10s, 5m, or seconds), max_modifications, max_modification_bytes (K, M, G), protocol (2 to 6), clients and skip_clients (networks separated by '|', 'local' for smtpd's unix socket: 'clients=192.0.2.0/24|2001:db8::/32'), skip_authenticated and evaluation (true or false), and the macro settings below (connect_macros ... eom_macros, macro_defaults, macro_v) for this milter alone. Repeat for several milters, in order; replaces the configuration file's milters")
	fs.StringVar(&s.DefaultAction, "default-action", s.DefaultAction, "what a session gets when a milter fails or times out: tempfail, accept or reject")
	fs.Var((*Duration)(&s.ConnectTimeout), "connect-timeout", "`time` to connect to a milter and negotiate")
	fs.Var((*Duration)(&s.CommandTimeout), "command-timeout", "`time` a milter has to answer CONNECT, HELO, MAIL, RCPT and DATA")
	fs.Var((*Duration)(&s.ContentTimeout), "content-timeout", "`time` a milter has to answer each header, body chunk and end of message")
	fs.Var((*Duration)(&s.EOMTimeout), "eom-timeout", "`time` a milter has for the whole of end of message, however many PROGRESS packets it sends (Sendmail's T=E)")
	fs.IntVar(&s.MaxModifications, "max-modifications", s.MaxModifications, "how many modifications (header changes, recipient changes, body replacement packets) one milter may ask for at one end of message; more is that milter's default action")
	fs.Var(&s.MaxModificationBytes, "max-modification-bytes", "how many bytes of modifications, replacement body included, one milter may send at one end of message (K, M, G suffixes); more is that milter's default action")
	fs.StringVar((*string)(&s.Policy.Discard), "discard", string(s.Policy.Discard), "a milter's DISCARD (OpenSMTPD has no silent drop): reject (550 5.7.1) or junk (deliver marked X-Spam: yes)")
	fs.StringVar((*string)(&s.Policy.Quarantine), "quarantine", string(s.Policy.Quarantine), "a milter's QUARANTINE: mark (deliver marked X-Spam: yes), reject or tempfail")
	fs.StringVar((*string)(&s.Policy.Envelope), "envelope-change", string(s.Policy.Envelope), "a milter's recipient or sender change at end of message (OpenSMTPD cannot make it): tempfail, reject or ignore")
	fs.Var((*Duration)(&s.ShutdownTimeout), "shutdown-timeout", "once smtpd closes the pipe (or on SIGTERM), the `time` sessions in flight have to finish")
	fs.StringVar(&s.Hostname, "hostname", s.Hostname, "the j macro (MTA host name); default: smtpd's own name")
	fs.StringVar(&s.DaemonName, "daemon-name", s.DaemonName, "the {daemon_name} macro; default: the host name")
	fs.TextVar(&s.LogLevel, "log-level", s.LogLevel, "log level: debug, info, warn or error")
	fs.Var(&s.BufferLimit, "buffer-limit", "how much of one message is kept in memory before the rest goes to an unlinked temporary file (K, M, G suffixes)")
	fs.Var(&s.MemoryBudget, "memory-budget", "the memory all buffered messages may use together; beyond it messages go to temporary files")
	fs.StringVar(&s.TempDir, "temp-dir", s.TempDir, "where messages over the memory limits are buffered; default: $TMPDIR or /tmp")
	s.addMacroFlags(fs)
	fs.Var(prefixList{&s.Trace.Clients}, "trace-clients", "trace the sessions of these clients whatever -log-level says: addresses or networks (192.0.2.7, 198.51.100.0/24, 2001:db8::/32) separated by spaces or commas")
	fs.BoolVar(&s.Trace.Content, "trace-content", s.Trace.Content, "show message content (data lines, header values, body chunks) in the trace, not only its size")
	fs.StringVar(&s.MetricsListen, "metrics-listen", s.MetricsListen, "serve Prometheus metrics over HTTP on this address (host:port, e.g. 127.0.0.1:9465); empty: no metrics")
}

// settingFlags are the flags whose value a configuration file can set,
// and how to copy each from the file's settings.
var settingFlags = map[string]func(dst, src *Settings){
	"default-action":         func(d, s *Settings) { d.DefaultAction = s.DefaultAction },
	"connect-timeout":        func(d, s *Settings) { d.ConnectTimeout = s.ConnectTimeout },
	"command-timeout":        func(d, s *Settings) { d.CommandTimeout = s.CommandTimeout },
	"content-timeout":        func(d, s *Settings) { d.ContentTimeout = s.ContentTimeout },
	"eom-timeout":            func(d, s *Settings) { d.EOMTimeout = s.EOMTimeout },
	"max-modifications":      func(d, s *Settings) { d.MaxModifications = s.MaxModifications },
	"max-modification-bytes": func(d, s *Settings) { d.MaxModificationBytes = s.MaxModificationBytes },
	"discard":                func(d, s *Settings) { d.Policy.Discard = s.Policy.Discard },
	"quarantine":             func(d, s *Settings) { d.Policy.Quarantine = s.Policy.Quarantine },
	"envelope-change":        func(d, s *Settings) { d.Policy.Envelope = s.Policy.Envelope },
	"shutdown-timeout":       func(d, s *Settings) { d.ShutdownTimeout = s.ShutdownTimeout },
	"hostname":               func(d, s *Settings) { d.Hostname = s.Hostname },
	"daemon-name":            func(d, s *Settings) { d.DaemonName = s.DaemonName },
	"log-level":              func(d, s *Settings) { d.LogLevel = s.LogLevel },
	"metrics-listen":         func(d, s *Settings) { d.MetricsListen = s.MetricsListen },
	"buffer-limit":           func(d, s *Settings) { d.BufferLimit = s.BufferLimit },
	"memory-budget":          func(d, s *Settings) { d.MemoryBudget = s.MemoryBudget },
	"temp-dir":               func(d, s *Settings) { d.TempDir = s.TempDir },
	"connect-macros":         func(d, s *Settings) { d.Macros.Lists.Connect = s.Macros.Lists.Connect },
	"helo-macros":            func(d, s *Settings) { d.Macros.Lists.Helo = s.Macros.Lists.Helo },
	"mail-macros":            func(d, s *Settings) { d.Macros.Lists.Mail = s.Macros.Lists.Mail },
	"rcpt-macros":            func(d, s *Settings) { d.Macros.Lists.Rcpt = s.Macros.Lists.Rcpt },
	"data-macros":            func(d, s *Settings) { d.Macros.Lists.Data = s.Macros.Lists.Data },
	"eoh-macros":             func(d, s *Settings) { d.Macros.Lists.EOH = s.Macros.Lists.EOH },
	"eom-macros":             func(d, s *Settings) { d.Macros.Lists.EOM = s.Macros.Lists.EOM },
	"macro-defaults":         func(d, s *Settings) { d.Macros.Defaults = s.Macros.Defaults },
	"macro-v":                func(d, s *Settings) { d.Macros.V = s.Macros.V },
	"trace-clients":          func(d, s *Settings) { d.Trace.Clients = s.Trace.Clients },
	"trace-content":          func(d, s *Settings) { d.Trace.Content = s.Trace.Content },
}

// ApplyFile reads s.ConfigPath, when given, and takes from it every
// setting whose flag was not given on the command line.
func (s *Settings) ApplyFile(fs *flag.FlagSet) error {
	if s.ConfigPath == "" {
		return nil
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	file := Defaults()
	if err := loadConfig(s.ConfigPath, &file); err != nil {
		return err
	}
	for name, copyFrom := range settingFlags {
		if !set[name] {
			copyFrom(s, &file)
		}
	}
	if !set["milter"] {
		s.fileMilters, s.fileSpecs = file.fileMilters, file.fileSpecs
	}
	return nil
}

// options are the milter options every milter starts from.
func (s *Settings) options() milter.Options {
	o := milter.DefaultOptions
	o.ConnectTimeout, o.CommandTimeout, o.ContentTimeout = s.ConnectTimeout, s.CommandTimeout, s.ContentTimeout
	o.EOMTimeout, o.MaxModifications, o.MaxModificationBytes = s.EOMTimeout, s.MaxModifications, int64(s.MaxModificationBytes)
	macros := s.Macros
	o.Macros = &macros
	return o
}

// MilterConfigs checks what the flags could not, and returns the milters:
// those of -milter when given, else the file's [[milter]] tables.
func (s *Settings) MilterConfigs() ([]milter.Config, error) {
	if _, err := gateway.ParseAction(s.DefaultAction); err != nil {
		return nil, fmt.Errorf("default action: %w", err)
	}
	if err := s.Policy.Check(); err != nil {
		return nil, err
	}
	if err := checkListen(s.MetricsListen); err != nil {
		return nil, err
	}
	if err := checkBufferLimit(s.BufferLimit); err != nil {
		return nil, fmt.Errorf("-buffer-limit: %w", err)
	}
	if err := checkDir(s.TempDir); err != nil {
		return nil, fmt.Errorf("-temp-dir: %w", err)
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{{"connect-timeout", s.ConnectTimeout}, {"command-timeout", s.CommandTimeout}, {"content-timeout", s.ContentTimeout},
		{"eom-timeout", s.EOMTimeout}, {"shutdown-timeout", s.ShutdownTimeout}} {
		if d.d <= 0 {
			return nil, fmt.Errorf("-%s %v: must be positive", d.name, d.d)
		}
	}
	if s.MaxModifications <= 0 {
		return nil, fmt.Errorf("-max-modifications %d: must be positive", s.MaxModifications)
	}
	var out []milter.Config
	if len(s.Milters) > 0 {
		for _, spec := range s.Milters {
			c, err := milter.ParseConfig(spec, s.options())
			if err != nil {
				return nil, fmt.Errorf("-milter: %w", err)
			}
			out = append(out, c)
		}
		return out, nil
	}
	for _, spec := range s.fileSpecs {
		c, err := milter.ParseConfig(spec, s.options()) // checked while decoding
		if err != nil {
			return nil, fmt.Errorf("%s: milters: %w", s.ConfigPath, err)
		}
		out = append(out, c)
	}
	for _, f := range s.fileMilters {
		out = append(out, f.config(s.options()))
	}
	if len(out) == 0 {
		if s.ConfigPath != "" {
			return nil, fmt.Errorf("no milter configured: give a [[milter]] table or milters = [...] in %s, or -milter SPEC", s.ConfigPath)
		}
		return nil, errors.New("no milter configured: give at least one -milter SPEC, or -config FILE")
	}
	return out, nil
}

// GatewayConfig is the gateway's configuration for these settings.
func (s *Settings) GatewayConfig(milters []milter.Config, log *zap.Logger) gateway.Config {
	action, _ := gateway.ParseAction(s.DefaultAction) // checked in MilterConfigs
	var pools []*milter.Pool
	for _, c := range milters {
		pools = append(pools, milter.NewPool(c, log))
	}
	return gateway.Config{
		Milters:         pools,
		DefaultAction:   action,
		Policy:          s.Policy,
		Hostname:        s.Hostname,
		DaemonName:      s.DaemonName,
		Log:             log,
		ShutdownTimeout: s.ShutdownTimeout,
		BufferLimit:     int(s.BufferLimit),
		MemoryBudget:    int64(s.MemoryBudget),
		TempDir:         s.TempDir,
		Trace:           s.Trace,
	}
}
