package milter

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Config is one milter as the postmaster configured it: one endpoint, or a
// pool of endpoints that serve the same role, and its settings.
type Config struct {
	Name          string // as written, for logs
	Endpoints     []Spec
	Options       Options
	DefaultAction string // "" means the global default action
}

// ParseConfig reads a milter setting in Postfix's per-milter notation,
// with several endpoints separated by commas forming a pool:
//
//	inet:127.0.0.1:8891
//	inet:127.0.0.1:8891{default_action=accept, command_timeout=10s}
//	inet:10.0.0.1:11332,inet:10.0.0.2:11332{content_timeout=2m}
//
// Settings: default_action (tempfail, accept, reject), connect_timeout,
// command_timeout, content_timeout, eom_timeout (Go durations, or seconds
// as Postfix writes them), protocol (2 to 6), max_modifications (a count)
// and max_modification_bytes (bytes, with K, M or G for KiB, MiB, GiB),
// and the macro settings (macrolists.go): connect_macros, helo_macros,
// mail_macros, rcpt_macros, data_macros, eoh_macros, eom_macros (names
// separated by spaces; empty: none), macro_defaults (name=value pairs
// separated by spaces) and macro_v.
// base supplies the settings not given.
func ParseConfig(s string, base Options) (Config, error) {
	c := Config{Name: s, Options: base}
	endpoints, settings := s, ""
	if i := strings.IndexByte(s, '{'); i >= 0 {
		if !strings.HasSuffix(strings.TrimSpace(s), "}") {
			return c, fmt.Errorf("milter %q: settings must end with '}'", s)
		}
		endpoints, settings = s[:i], strings.TrimSuffix(strings.TrimSpace(s[i+1:]), "}")
	}
	for _, e := range strings.Split(endpoints, ",") {
		spec, err := ParseSpec(strings.TrimSpace(e))
		if err != nil {
			return c, err
		}
		c.Endpoints = append(c.Endpoints, spec)
	}
	for _, kv := range strings.Split(settings, ",") {
		if strings.TrimSpace(kv) == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || v == "" && !isMacroListSetting(k) {
			return c, fmt.Errorf("milter %q: setting %q: want name=value", s, kv)
		}
		var err error
		switch k {
		case "default_action":
			switch v {
			case "tempfail", "accept", "reject":
				c.DefaultAction = v
			default:
				err = fmt.Errorf("want tempfail, accept or reject")
			}
		case "connect_timeout":
			c.Options.ConnectTimeout, err = duration(v)
		case "command_timeout":
			c.Options.CommandTimeout, err = duration(v)
		case "content_timeout":
			c.Options.ContentTimeout, err = duration(v)
		case "eom_timeout":
			c.Options.EOMTimeout, err = duration(v)
		case "max_modifications":
			var n int64
			n, err = ParseSize(v, 1<<31-1)
			c.Options.MaxModifications = int(n)
		case "max_modification_bytes":
			c.Options.MaxModificationBytes, err = ParseSize(v, 1<<62)
		case "protocol":
			var n int
			n, err = strconv.Atoi(v)
			if err == nil && (n < 2 || n > 6) {
				err = fmt.Errorf("want 2 to 6")
			}
			c.Options.Version = uint32(n)
		default:
			var known bool
			if known, err = c.Options.setMacroSetting(k, v); !known {
				err = fmt.Errorf("unknown setting (want default_action, connect_timeout, command_timeout, content_timeout, eom_timeout, protocol, max_modifications, max_modification_bytes, %s)", macroSettingNames)
			}
		}
		if err != nil {
			return c, fmt.Errorf("milter %q: %s=%s: %v", s, k, v, err)
		}
	}
	return c, nil
}

// duration reads "10s", "2m" or, as Postfix allows, plain seconds.
func duration(v string) (time.Duration, error) {
	if n, err := strconv.Atoi(v); err == nil {
		if n <= 0 {
			return 0, fmt.Errorf("must be positive")
		}
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(v)
	if err == nil && d <= 0 {
		err = fmt.Errorf("must be positive")
	}
	return d, err
}

// ParseSize reads a positive number of at most max, written plain or with
// a binary suffix: 512K, 64M, 64MiB, 1G.
func ParseSize(v string, max int64) (int64, error) {
	s := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSpace(v), "iB"), "B")
	mult := int64(1)
	if s != "" {
		switch s[len(s)-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		}
		if mult > 1 {
			s = s[:len(s)-1]
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n <= 0 || n > max/mult {
		return 0, fmt.Errorf("want a positive number up to %d, with K, M or G for KiB, MiB or GiB", max)
	}
	return n * mult, nil
}
