package config

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"go.uber.org/zap/zapcore"

	"github.com/filter-milter/filter-milter/gateway"
	"github.com/filter-milter/filter-milter/milter"
)

// fileConfig is the configuration file (-config), TOML. Every key is a
// command-line flag with '-' written '_'; [[milter]] tables are the
// -milter flags with their settings, and so is milters, a list of specs
// in -milter notation (Postfix's smtpd_milters, one milter a string).
type fileConfig struct {
	Milter               []fileMilter  `toml:"milter"`
	Milters              []milterSpec  `toml:"milters"`
	DefaultAction        actionName    `toml:"default_action"`
	ConnectTimeout       duration      `toml:"connect_timeout"`
	CommandTimeout       duration      `toml:"command_timeout"`
	ContentTimeout       duration      `toml:"content_timeout"`
	EOMTimeout           duration      `toml:"eom_timeout"`
	ShutdownTimeout      duration      `toml:"shutdown_timeout"`
	MaxModifications     modCount      `toml:"max_modifications"`
	MaxModificationBytes ByteSize      `toml:"max_modification_bytes"`
	Discard              discardPolicy `toml:"discard"`
	Quarantine           quarPolicy    `toml:"quarantine"`
	EnvelopeChange       envPolicy     `toml:"envelope_change"`
	Hostname             string        `toml:"hostname"`
	DaemonName           string        `toml:"daemon_name"`
	LogLevel             zapcore.Level `toml:"log_level"`
	MetricsListen        listenAddr    `toml:"metrics_listen"`
	BufferLimit          bufferSize    `toml:"buffer_limit"`
	MemoryBudget         ByteSize      `toml:"memory_budget"`
	TempDir              dirPath       `toml:"temp_dir"`
	TraceClients         []prefix      `toml:"trace_clients"`
	TraceContent         bool          `toml:"trace_content"`
	fileMacros                         // connect_macros ... macro_v
}

// fileMilter is one [[milter]] table: one socket, or a pool of sockets
// serving the same role, and the settings -milter takes in braces.
type fileMilter struct {
	Name                 string       `toml:"name"`
	Socket               socketSpec   `toml:"socket"`
	Sockets              []socketSpec `toml:"sockets"`
	DefaultAction        actionName   `toml:"default_action"`
	ConnectTimeout       duration     `toml:"connect_timeout"`
	CommandTimeout       duration     `toml:"command_timeout"`
	ContentTimeout       duration     `toml:"content_timeout"`
	EOMTimeout           duration     `toml:"eom_timeout"`
	Protocol             protoVersion `toml:"protocol"`
	MaxModifications     modCount     `toml:"max_modifications"`
	MaxModificationBytes ByteSize     `toml:"max_modification_bytes"`
	fileMacros                        // connect_macros ... macro_v, for this milter
	// Which sessions consult this milter, and how (milter.Scope).
	Clients           clientList `toml:"clients"`
	SkipClients       clientList `toml:"skip_clients"`
	SkipAuthenticated bool       `toml:"skip_authenticated"`
	Evaluation        bool       `toml:"evaluation"`
}

// loadConfig reads the configuration file into s, for every key the file
// sets. Errors name the file, the line and the key.
func loadConfig(path string, s *Settings) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var fc fileConfig
	md, err := toml.Decode(string(data), &fc)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			if pe.LastKey != "" {
				return fmt.Errorf("%s:%d: key %s: %s", path, pe.Position.Line, pe.LastKey, pe.Message)
			}
			return fmt.Errorf("%s:%d: %s", path, pe.Position.Line, pe.Message)
		}
		// Type mismatches come as text: "toml: line 3 (last key "x"): ...".
		if m := tomlErrText.FindStringSubmatch(err.Error()); m != nil {
			return fmt.Errorf("%s:%s: key %s: %s", path, m[1], m[2], m[3])
		}
		return fmt.Errorf("%s: %v", path, err)
	}
	loc := newLocator(data)
	if und := md.Undecoded(); len(und) > 0 {
		var msgs []string
		for _, k := range und {
			msgs = append(msgs, fmt.Sprintf("%s:%s: unknown key %s", path, loc.line(k), k))
		}
		return errors.New(strings.Join(msgs, "\n"))
	}
	def := func(k ...string) bool { return md.IsDefined(k...) }
	if def("default_action") {
		s.DefaultAction = string(fc.DefaultAction)
	}
	for _, d := range []struct {
		key string
		src duration
		dst *time.Duration
	}{
		{"connect_timeout", fc.ConnectTimeout, &s.ConnectTimeout},
		{"command_timeout", fc.CommandTimeout, &s.CommandTimeout},
		{"content_timeout", fc.ContentTimeout, &s.ContentTimeout},
		{"eom_timeout", fc.EOMTimeout, &s.EOMTimeout},
		{"shutdown_timeout", fc.ShutdownTimeout, &s.ShutdownTimeout},
	} {
		if def(d.key) {
			*d.dst = time.Duration(d.src)
		}
	}
	if def("max_modifications") {
		s.MaxModifications = int(fc.MaxModifications)
	}
	if def("max_modification_bytes") {
		s.MaxModificationBytes = fc.MaxModificationBytes
	}
	if def("discard") {
		s.Policy.Discard = gateway.DiscardPolicy(fc.Discard)
	}
	if def("quarantine") {
		s.Policy.Quarantine = gateway.QuarantinePolicy(fc.Quarantine)
	}
	if def("envelope_change") {
		s.Policy.Envelope = gateway.EnvelopePolicy(fc.EnvelopeChange)
	}
	if def("hostname") {
		s.Hostname = fc.Hostname
	}
	if def("daemon_name") {
		s.DaemonName = fc.DaemonName
	}
	if def("log_level") {
		s.LogLevel = fc.LogLevel
	}
	if def("metrics_listen") {
		s.MetricsListen = string(fc.MetricsListen)
	}
	if def("buffer_limit") {
		s.BufferLimit = ByteSize(fc.BufferLimit)
	}
	if def("memory_budget") {
		s.MemoryBudget = fc.MemoryBudget
	}
	if def("temp_dir") {
		s.TempDir = string(fc.TempDir)
	}
	if def("trace_clients") {
		s.Trace.Clients = nil
		for _, p := range fc.TraceClients {
			s.Trace.Clients = append(s.Trace.Clients, netip.Prefix(p))
		}
	}
	if def("trace_content") {
		s.Trace.Content = fc.TraceContent
	}
	fc.fileMacros.apply(&s.Macros)
	s.fileMilters, s.fileSpecs = nil, nil
	if len(fc.Milters) > 0 && len(fc.Milter) > 0 {
		return fmt.Errorf("%s:%s: give milters = [...] or [[milter]] tables, not both", path, loc.line(toml.Key{"milters"}))
	}
	for _, m := range fc.Milters {
		s.fileSpecs = append(s.fileSpecs, string(m))
	}
	for i, m := range fc.Milter {
		at := fmt.Sprintf("%s:%s", path, loc.line(toml.Key{"milter"}, i))
		if m.Socket != "" && len(m.Sockets) > 0 {
			return fmt.Errorf("%s: [[milter]] #%d: give socket or sockets, not both", at, i+1)
		}
		sockets := m.Sockets
		if m.Socket != "" {
			sockets = []socketSpec{m.Socket}
		}
		if len(sockets) == 0 {
			return fmt.Errorf("%s: [[milter]] #%d: no socket: give socket = \"inet:127.0.0.1:8891\" or sockets = [...] for a pool", at, i+1)
		}
		fm := fileMilterConfig{name: m.Name, action: string(m.DefaultAction), version: uint32(m.Protocol), where: at}
		for _, sp := range sockets {
			spec, _ := milter.ParseSpec(string(sp)) // checked while decoding
			fm.endpoints = append(fm.endpoints, spec)
		}
		if fm.name == "" {
			var names []string
			for _, sp := range sockets {
				names = append(names, string(sp))
			}
			fm.name = strings.Join(names, ",")
		}
		fm.connect, fm.command, fm.content = time.Duration(m.ConnectTimeout), time.Duration(m.CommandTimeout), time.Duration(m.ContentTimeout)
		fm.eom, fm.maxMods, fm.maxModBytes = time.Duration(m.EOMTimeout), int(m.MaxModifications), int64(m.MaxModificationBytes)
		fm.macros = m.fileMacros
		fm.scope = milter.Scope{Clients: milter.Clients(m.Clients), SkipClients: milter.Clients(m.SkipClients),
			SkipAuthenticated: m.SkipAuthenticated, Evaluation: m.Evaluation}
		s.fileMilters = append(s.fileMilters, fm)
	}
	return nil
}

var tomlErrText = regexp.MustCompile(`^toml: line (\d+) \(last key "(.*?)"\): (.*)$`)

// fileMilterConfig is a [[milter]] table, resolved into a milter.Config
// once the global timeouts (which flags may override) are known.
type fileMilterConfig struct {
	name                      string
	endpoints                 []milter.Spec
	action                    string
	connect, command, content time.Duration // 0: the global value
	eom                       time.Duration // 0: the global value
	maxMods                   int           // 0: the global value
	maxModBytes               int64         // 0: the global value
	version                   uint32        // 0: 6
	where                     string        // file:line, for errors
	macros                    fileMacros    // nil keys: the global value
	scope                     milter.Scope
}

func (f fileMilterConfig) config(base milter.Options) milter.Config {
	c := milter.Config{Name: f.name, Endpoints: f.endpoints, Options: base, DefaultAction: f.action, Scope: f.scope}
	if f.connect > 0 {
		c.Options.ConnectTimeout = f.connect
	}
	if f.command > 0 {
		c.Options.CommandTimeout = f.command
	}
	if f.content > 0 {
		c.Options.ContentTimeout = f.content
	}
	if f.version > 0 {
		c.Options.Version = f.version
	}
	if f.eom > 0 {
		c.Options.EOMTimeout = f.eom
	}
	if f.maxMods > 0 {
		c.Options.MaxModifications = f.maxMods
	}
	if f.maxModBytes > 0 {
		c.Options.MaxModificationBytes = f.maxModBytes
	}
	c.Options.Macros = f.macros.forMilter(c.Options.Macros)
	return c
}

// Value types that check themselves while the file is decoded, so that a
// bad value is reported with its line and key.

// duration is a Go duration ("10s", "5m") or, as Postfix writes them, a
// number of seconds.
type duration time.Duration

func (d *duration) UnmarshalTOML(v any) error {
	var text string
	switch x := v.(type) {
	case int64:
		text = strconv.FormatInt(x, 10)
	case string:
		text = x
	default:
		return fmt.Errorf("bad duration %v: want e.g. \"30s\", \"5m\" or a number of seconds", v)
	}
	t, err := milter.ParseDuration(text)
	if err != nil {
		return err
	}
	*d = duration(t)
	return nil
}

type actionName string

func (a *actionName) UnmarshalText(b []byte) error {
	act, err := gateway.ParseAction(string(b))
	if err != nil {
		return err
	}
	*a = actionName(act.String())
	return nil
}

func oneOf(v string, choices ...string) error {
	for _, c := range choices {
		if v == c {
			return nil
		}
	}
	return fmt.Errorf("%q: want one of %s", v, strings.Join(choices, ", "))
}

type discardPolicy string

func (p *discardPolicy) UnmarshalText(b []byte) error {
	*p = discardPolicy(b)
	return oneOf(string(b), "reject", "junk")
}

type quarPolicy string

func (p *quarPolicy) UnmarshalText(b []byte) error {
	*p = quarPolicy(b)
	return oneOf(string(b), "mark", "reject", "tempfail")
}

type envPolicy string

func (p *envPolicy) UnmarshalText(b []byte) error {
	*p = envPolicy(b)
	return oneOf(string(b), "tempfail", "reject", "ignore")
}

type socketSpec string

func (s *socketSpec) UnmarshalText(b []byte) error {
	if _, err := milter.ParseSpec(string(b)); err != nil {
		return err
	}
	*s = socketSpec(b)
	return nil
}

// milterSpec is one milter in -milter notation, either of Postfix's.
type milterSpec string

func (m *milterSpec) UnmarshalText(b []byte) error {
	if _, err := milter.ParseConfig(string(b), milter.DefaultOptions); err != nil {
		return err
	}
	*m = milterSpec(b)
	return nil
}

// clientList is a list of networks and the word "local" (clients,
// skip_clients): ["192.0.2.0/24", "2001:db8::/32", "local"].
type clientList milter.Clients

func (c *clientList) UnmarshalTOML(v any) error {
	list, ok := v.([]any)
	if !ok {
		return fmt.Errorf("%v: want a list of networks, e.g. [\"192.0.2.0/24\", \"2001:db8::/32\", \"local\"]", v)
	}
	items := make([]string, len(list))
	for i, x := range list {
		if items[i], ok = x.(string); !ok {
			return fmt.Errorf("%v: want a network in quotes, e.g. \"192.0.2.0/24\"", x)
		}
	}
	cl, err := milter.ParseClients(items)
	if err != nil {
		return err
	}
	*c = clientList(cl)
	return nil
}

type protoVersion uint32

func (p *protoVersion) UnmarshalTOML(v any) error {
	n, ok := v.(int64)
	if !ok || n < 2 || n > 6 {
		return fmt.Errorf("protocol %v: want a milter protocol version from 2 to 6", v)
	}
	*p = protoVersion(n)
	return nil
}

// modCount is a number of modifications: a positive integer.
type modCount int

func (m *modCount) UnmarshalTOML(v any) error {
	n, ok := v.(int64)
	if !ok || n <= 0 || n > 1<<31-1 {
		return fmt.Errorf("%v: want a positive number of modifications", v)
	}
	*m = modCount(n)
	return nil
}

// bufferSize is a ByteSize of at most 1G, the most one message may keep
// in memory.
type bufferSize ByteSize

func (b *bufferSize) UnmarshalTOML(v any) error {
	var n ByteSize
	if err := n.UnmarshalTOML(v); err != nil {
		return err
	}
	if err := checkBufferLimit(n); err != nil {
		return err
	}
	*b = bufferSize(n)
	return nil
}

// dirPath is a directory that exists.
type dirPath string

func (d *dirPath) UnmarshalText(b []byte) error {
	if err := checkDir(string(b)); err != nil {
		return err
	}
	*d = dirPath(b)
	return nil
}

type listenAddr string

func (l *listenAddr) UnmarshalText(b []byte) error {
	if err := checkListen(string(b)); err != nil {
		return err
	}
	*l = listenAddr(b)
	return nil
}

// checkListen accepts host:port with a numeric port; "" turns metrics off.
func checkListen(s string) error {
	if s == "" {
		return nil
	}
	_, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("metrics listen address %q: want host:port, e.g. 127.0.0.1:9465", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("metrics listen address %q: bad port", s)
	}
	return nil
}
