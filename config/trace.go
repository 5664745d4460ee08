package config

import (
	"fmt"
	"net/netip"
	"strings"
)

// The trace settings: trace_clients, the networks whose sessions are
// traced whatever the log level, and trace_content, message content shown
// in the trace (gateway.Trace).

// ParsePrefix reads a network, 192.0.2.0/24 or 2001:db8::/32, or one
// address, which is a network of that address alone.
func ParsePrefix(v string) (netip.Prefix, error) {
	if !strings.Contains(v, "/") {
		a, err := netip.ParseAddr(v)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q: want an address or a network such as 192.0.2.0/24 or 2001:db8::/32", v)
		}
		return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
	}
	p, err := netip.ParsePrefix(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q: want an address or a network such as 192.0.2.0/24 or 2001:db8::/32", v)
	}
	return p.Masked(), nil
}

// prefixList is -trace-clients: networks separated by spaces or commas;
// each use of the flag replaces the list.
type prefixList struct{ list *[]netip.Prefix }

func (f prefixList) String() string {
	if f.list == nil {
		return ""
	}
	var s []string
	for _, p := range *f.list {
		s = append(s, p.String())
	}
	return strings.Join(s, " ")
}

func (f prefixList) Set(v string) error {
	var l []netip.Prefix
	for _, w := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
		p, err := ParsePrefix(w)
		if err != nil {
			return err
		}
		l = append(l, p)
	}
	*f.list = l
	return nil
}

// prefix is one network of trace_clients in the configuration file.
type prefix netip.Prefix

func (p *prefix) UnmarshalText(b []byte) error {
	n, err := ParsePrefix(string(b))
	if err == nil {
		*p = prefix(n)
	}
	return err
}
