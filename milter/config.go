package milter

import (
	"fmt"
	"math"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Config is one milter as the postmaster configured it: one endpoint, or a
// pool of endpoints that serve the same role, and its settings.
type Config struct {
	Name          string // as written, for logs
	Endpoints     []Spec
	Options       Options
	DefaultAction string // "" means the global default action
	// Which sessions consult the milter and how (Postfix's
	// smtpd_milter_maps, milter-manager's evaluation mode): see Scope.
	Scope Scope
}

// Scope is which SMTP sessions a milter takes part in, and whether its
// word counts: the per-milter settings clients, skip_clients,
// skip_authenticated and evaluation.
type Scope struct {
	Clients           Clients // consulted only for these clients; empty: every client
	SkipClients       Clients // never consulted for these
	SkipAuthenticated bool    // not for the transactions after a successful AUTH
	Evaluation        bool    // told everything, enforced in nothing: its verdicts and changes are only logged and counted
}

// ParseConfig reads a milter setting in either of Postfix's notations:
// main.cf's braces around the whole, or the endpoint followed by its
// settings in braces. Several endpoints of one role form a pool:
//
//	inet:127.0.0.1:8891
//	{ inet:127.0.0.1:8891, default_action=accept, command_timeout=10s }
//	inet:127.0.0.1:8891{default_action=accept, command_timeout=10s}
//	inet:10.0.0.1:11332,inet:10.0.0.2:11332{content_timeout=2m}
//	{ inet:10.0.0.1:11332, inet:10.0.0.2:11332, content_timeout=2m }
//
// Postfix has no pools; in the braces form the endpoints come first, and
// an item is a setting when it has a '=' before any ':' (a socket always
// has a ':' or starts with '/'). Items are separated by commas or spaces,
// as in main.cf.
//
// Settings: default_action (tempfail, accept, reject), connect_timeout,
// command_timeout, content_timeout, eom_timeout (see ParseDuration),
// protocol (2 to 6), max_modifications (a count) and
// max_modification_bytes (bytes, with K, M or G for KiB, MiB, GiB);
// clients and skip_clients (networks and "local" separated by '|'),
// skip_authenticated and evaluation (true or false, or yes, no), see
// Scope; and
// the macro settings (macrolists.go): connect_macros, helo_macros,
// mail_macros, rcpt_macros, data_macros, eoh_macros, eom_macros (macro
// names separated by spaces, {client_addr} or client_addr; empty: none),
// macro_defaults (name=value
// pairs separated by spaces) and macro_v. Since items are separated by
// spaces too, the words after a macro setting that are not a setting of
// their own belong to its value (joinMacroValues).
// base supplies the settings not given. Every error names the spec, and
// the setting when one is wrong.
func ParseConfig(s string, base Options) (Config, error) {
	c := Config{Name: strings.TrimSpace(s), Options: base}
	endpoints, settings, err := splitConfig(c.Name)
	if err != nil {
		return c, fmt.Errorf("milter %q: %v", s, err)
	}
	for _, e := range endpoints {
		spec, err := ParseSpec(e)
		if err != nil {
			return c, fmt.Errorf("milter %q: %v", s, err)
		}
		c.Endpoints = append(c.Endpoints, spec)
	}
	for _, kv := range joinMacroValues(settings) {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || v == "" && !isMacroListSetting(k) {
			if _, err := parseNet(kv); err == nil {
				return c, fmt.Errorf("milter %q: setting %q: want name=value (networks in clients and skip_clients are separated by '|')", s, kv)
			}
			return c, fmt.Errorf("milter %q: setting %q: want name=value", s, kv)
		}
		if err := c.set(k, v); err != nil {
			return c, fmt.Errorf("milter %q: %s=%s: %v", s, k, v, err)
		}
	}
	return c, nil
}

// set applies one setting.
func (c *Config) set(k, v string) error {
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
		c.Options.ConnectTimeout, err = ParseDuration(v)
	case "command_timeout":
		c.Options.CommandTimeout, err = ParseDuration(v)
	case "content_timeout":
		c.Options.ContentTimeout, err = ParseDuration(v)
	case "eom_timeout":
		c.Options.EOMTimeout, err = ParseDuration(v)
	case "max_modifications":
		var n int64
		n, err = ParseSize(v, 1<<31-1)
		c.Options.MaxModifications = int(n)
	case "max_modification_bytes":
		c.Options.MaxModificationBytes, err = ParseSize(v, 1<<62)
	case "clients", "skip_clients", "skip_authenticated", "evaluation":
		err = c.Scope.set(k, v)
	case "protocol":
		var n int
		n, err = strconv.Atoi(v)
		if err != nil || n < 2 || n > 6 {
			err = fmt.Errorf("want 2 to 6")
		}
		c.Options.Version = uint32(n)
	default:
		var known bool
		if known, err = c.Options.setMacroSetting(k, v); !known {
			err = fmt.Errorf("unknown setting (want %s, %s)", strings.Join(plainSettings, ", "), macroSettingNames)
		}
	}
	return err
}

// plainSettings are the per-milter settings whose value is one word.
var plainSettings = []string{"default_action", "connect_timeout", "command_timeout", "content_timeout",
	"eom_timeout", "protocol", "max_modifications", "max_modification_bytes",
	"clients", "skip_clients", "skip_authenticated", "evaluation"}

// set applies one scope setting. In braces a list of clients is one item,
// its networks separated by '|' (commas and spaces separate settings
// there): clients=192.0.2.0/24|2001:db8::/32|local.
func (sc *Scope) set(k, v string) error {
	switch k {
	case "clients", "skip_clients":
		cl, err := ParseClients(strings.Split(v, "|"))
		if err != nil {
			return err
		}
		if k == "clients" {
			sc.Clients = cl
		} else {
			sc.SkipClients = cl
		}
		return nil
	}
	var b bool
	switch strings.ToLower(v) {
	case "true", "yes":
		b = true
	case "false", "no":
	default:
		return fmt.Errorf("want true or false (or yes, no)")
	}
	if k == "evaluation" {
		sc.Evaluation = b
	} else {
		sc.SkipAuthenticated = b
	}
	return nil
}

// joinMacroValues puts back together the values of macro settings that
// items split on spaces: after connect_macros=j, the item client_addr (no
// setting name of its own) is the list's next name; after
// macro_defaults=a=1, the item b=2 (b is no setting) its next pair.
func joinMacroValues(settings []string) []string {
	var out []string
	inMacro := false
	for _, item := range settings {
		k, _, _ := strings.Cut(item, "=")
		isSetting := slices.Contains(plainSettings, k) || isMacroSetting(k)
		if inMacro && !isSetting {
			out[len(out)-1] += " " + item
			continue
		}
		out = append(out, item)
		inMacro = isMacroSetting(k)
	}
	return out
}

// isMacroSetting reports whether k is one of the macro settings.
func isMacroSetting(k string) bool {
	return isMacroListSetting(k) || k == "macro_defaults" || k == "macro_v"
}

// spacedEquals lets "name = value" stand for "name=value" in settings,
// whose items are otherwise separated by spaces as well as commas.
var spacedEquals = regexp.MustCompile(`\s*=\s*`)

// splitConfig separates the endpoints from the settings, in either
// notation (see ParseConfig).
func splitConfig(s string) (endpoints, settings []string, err error) {
	if inner, ok := strings.CutPrefix(s, "{"); ok {
		// Postfix main.cf: { endpoint, name=value, ... }
		inner, ok = strings.CutSuffix(inner, "}")
		if !ok || !bracedNamesOnly(inner) {
			return nil, nil, fmt.Errorf("want one '{', the endpoints and settings, then '}' at the end")
		}
		for _, item := range items(inner) {
			switch {
			case !isSetting(item) && len(settings) > 0:
				return nil, nil, fmt.Errorf("endpoint %q after the settings: give the endpoints first", item)
			case !isSetting(item):
				endpoints = append(endpoints, item)
			default:
				settings = append(settings, item)
			}
		}
		if len(endpoints) == 0 {
			return nil, nil, fmt.Errorf("no endpoint: want { inet:host:port, name=value, ... }")
		}
		return endpoints, settings, nil
	}
	// Endpoints, then settings in braces: endpoint[,endpoint...]{name=value, ...}
	list, rest, braces := strings.Cut(s, "{")
	if braces {
		var ok bool
		rest, ok = strings.CutSuffix(rest, "}")
		if !ok || !bracedNamesOnly(rest) {
			return nil, nil, fmt.Errorf("settings must be one {...} at the end")
		}
		settings = items(rest)
	}
	for _, e := range strings.Split(list, ",") {
		endpoints = append(endpoints, strings.TrimSpace(e))
	}
	return endpoints, settings, nil
}

// bracedNamesOnly reports whether the braces in s, the inside of a
// milter's braces, are only those of macro names in macro settings
// ({client_addr}): each '{' closed by a '}' before any other brace.
func bracedNamesOnly(s string) bool {
	open := false
	for _, r := range s {
		switch r {
		case '{':
			if open {
				return false
			}
			open = true
		case '}':
			if !open {
				return false
			}
			open = false
		}
	}
	return !open
}

// items splits a list on commas and spaces.
func items(s string) []string {
	return strings.FieldsFunc(spacedEquals.ReplaceAllString(s, "="), func(r rune) bool {
		return r == ',' || unicode.IsSpace(r)
	})
}

// isSetting tells a name=value item from a socket: a socket has a ':'
// before any '=', or is a path.
func isSetting(item string) bool {
	name, _, _ := strings.Cut(item, "=")
	return !strings.Contains(name, ":") && !strings.HasPrefix(item, "/")
}

// ParseDuration reads a timeout as every flag, file key and milter
// setting takes it: a Go duration ("10s", "2m", "1m30s") or, as Postfix
// writes them, a plain number of seconds ("30"). It must be positive.
func ParseDuration(v string) (time.Duration, error) {
	v = strings.TrimSpace(v)
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 || n > int64(math.MaxInt64/time.Second) {
			return 0, fmt.Errorf("duration %q: must be positive", v)
		}
		return time.Duration(n) * time.Second, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("duration %q: want e.g. 30s, 5m or a number of seconds", v)
	}
	if d <= 0 {
		return 0, fmt.Errorf("duration %q: must be positive", v)
	}
	return d, nil
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
