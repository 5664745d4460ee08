package config

import (
	"flag"
	"fmt"
	"strings"

	"github.com/filter-milter/filter-milter/milter"
)

// The macro settings, as Postfix names them (postconf(5):
// milter_connect_macros ... milter_end_of_data_macros,
// milter_macro_defaults, milter_macro_v): flags, top-level keys of the
// configuration file, and keys of a [[milter]] table (and -milter's
// braces), which replace the top-level value for that milter.

// addMacroFlags registers the macro flags.
func (s *Settings) addMacroFlags(fs *flag.FlagSet) {
	for _, f := range milter.MacroListSettings {
		fs.Var(macroListFlag{f.List(&s.Macros.Lists)}, strings.ReplaceAll(f.Key, "_", "-"), "the macros sent to milters "+f.Stage+
			" (unless a milter asks for its own list), names separated by spaces or commas: {name}, or one letter; only those with a value are sent")
	}
	fs.Var(macroDefaultsFlag{&s.Macros.Defaults}, "macro-defaults", "values for macros a session has none for, as name=value pairs separated by spaces or commas (Postfix's milter_macro_defaults)")
	fs.StringVar(&s.Macros.V, "macro-v", s.Macros.V, "the value of the v macro; default: \"OpenSMTPD <smtpd's version>\"")
}

type macroListFlag struct{ list *[]string }

func (f macroListFlag) String() string {
	if f.list == nil {
		return ""
	}
	return strings.Join(*f.list, " ")
}

func (f macroListFlag) Set(v string) error {
	l, err := milter.ParseMacroList(v)
	if err == nil {
		*f.list = l
	}
	return err
}

type macroDefaultsFlag struct{ m *map[string]string }

func (f macroDefaultsFlag) String() string {
	if f.m == nil {
		return ""
	}
	return milter.FormatMacroDefaults(*f.m)
}

func (f macroDefaultsFlag) Set(v string) error {
	d, err := milter.ParseMacroDefaults(v)
	if err == nil {
		*f.m = d
	}
	return err
}

// fileMacros are the macro keys of the configuration file, at the top
// level and in a [[milter]] table; a key not given is nil. The lists are
// in the order of milter.MacroListSettings.
type fileMacros struct {
	ConnectMacros *macroList     `toml:"connect_macros"`
	HeloMacros    *macroList     `toml:"helo_macros"`
	MailMacros    *macroList     `toml:"mail_macros"`
	RcptMacros    *macroList     `toml:"rcpt_macros"`
	DataMacros    *macroList     `toml:"data_macros"`
	EOHMacros     *macroList     `toml:"eoh_macros"`
	EOMMacros     *macroList     `toml:"eom_macros"`
	MacroDefaults *macroDefaults `toml:"macro_defaults"`
	MacroV        *macroV        `toml:"macro_v"`
}

// apply sets in c what the file gives.
func (f fileMacros) apply(c *milter.MacroConfig) {
	for i, l := range []*macroList{f.ConnectMacros, f.HeloMacros, f.MailMacros, f.RcptMacros, f.DataMacros, f.EOHMacros, f.EOMMacros} {
		if l != nil {
			*milter.MacroListSettings[i].List(&c.Lists) = []string(*l)
		}
	}
	if f.MacroDefaults != nil {
		c.Defaults = map[string]string(*f.MacroDefaults)
	}
	if f.MacroV != nil {
		c.V = string(*f.MacroV)
	}
}

func (f fileMacros) given() bool { return f != fileMacros{} }

// forMilter is base with what a [[milter]] table gives; base is not changed.
func (f fileMacros) forMilter(base *milter.MacroConfig) *milter.MacroConfig {
	if !f.given() {
		return base
	}
	var c milter.MacroConfig
	if base != nil {
		c = *base
	}
	f.apply(&c)
	return &c
}

// macroList is a list of macro names: an array of names, or one string
// as Postfix writes it ("i {auth_type} {auth_authen}").
type macroList []string

func (l *macroList) UnmarshalTOML(v any) error {
	var text string
	switch x := v.(type) {
	case string:
		text = x
	case []any:
		var names []string
		for _, n := range x {
			s, ok := n.(string)
			if !ok || strings.ContainsAny(s, " ,") {
				return fmt.Errorf("macro list: %v: want one macro name per string", n)
			}
			names = append(names, s)
		}
		text = strings.Join(names, " ")
	default:
		return fmt.Errorf("macro list %v: want an array of names or a string of names separated by spaces", v)
	}
	names, err := milter.ParseMacroList(text)
	if err != nil {
		return err
	}
	*l = names
	return nil
}

// macroDefaults is a table of macro values ({ "{auth_type}" = "none" }),
// or a string of name=value pairs.
type macroDefaults map[string]string

func (d *macroDefaults) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case string:
		m, err := milter.ParseMacroDefaults(x)
		if err != nil {
			return err
		}
		*d = m
		return nil
	case map[string]any:
		m := map[string]string{}
		for k, val := range x {
			s, ok := val.(string)
			if !ok {
				return fmt.Errorf("macro default %s = %v: want a string", k, val)
			}
			if err := milter.SetMacroDefault(m, k, s); err != nil {
				return err
			}
		}
		*d = m
		return nil
	}
	return fmt.Errorf("macro defaults %v: want a table of name = \"value\"", v)
}

// macroV is the value of v: not empty (an empty macro is not sent).
type macroV string

func (m *macroV) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		return fmt.Errorf("macro_v: empty; leave it out for \"OpenSMTPD <version>\"")
	}
	*m = macroV(b)
	return nil
}
