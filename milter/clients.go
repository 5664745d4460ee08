package milter

import (
	"fmt"
	"net/netip"
	"strings"
)

// Clients is a set of SMTP clients, for a milter's clients and
// skip_clients settings: networks, and Local for the clients of smtpd's
// unix socket (sendmail(8)-style local submission, which has no address).
// A bare address is a network of one (/32, /128).
type Clients struct {
	Nets  []netip.Prefix
	Local bool
}

// LocalClients is the word for smtpd's local (unix-socket) clients in a
// list of networks.
const LocalClients = "local"

// ParseClients reads a list of networks ("192.0.2.0/24", "2001:db8::/32",
// "198.51.100.7") and the word "local". The error names the bad item.
func ParseClients(list []string) (Clients, error) {
	var c Clients
	for _, item := range list {
		item = strings.TrimSpace(item)
		if item == LocalClients {
			c.Local = true
			continue
		}
		p, err := parseNet(item)
		if err != nil {
			return Clients{}, err
		}
		c.Nets = append(c.Nets, p)
	}
	return c, nil
}

func parseNet(item string) (netip.Prefix, error) {
	if strings.Contains(item, "/") {
		p, err := netip.ParsePrefix(item)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q: want a network (192.0.2.0/24, 2001:db8::/32), an address or %q", item, LocalClients)
		}
		if p != p.Masked() {
			return netip.Prefix{}, fmt.Errorf("%q: host bits set; did you mean %s?", item, p.Masked())
		}
		return p, nil
	}
	a, err := netip.ParseAddr(item)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q: want a network (192.0.2.0/24, 2001:db8::/32), an address or %q", item, LocalClients)
	}
	return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), nil
}

// Empty reports whether the set names no client at all: as clients, it
// means every client.
func (c Clients) Empty() bool { return len(c.Nets) == 0 && !c.Local }

// Contains reports whether a client is in the set: a local client (local
// set) is only in a set with Local; a network client by its address. An
// IPv4-mapped IPv6 address counts as the IPv4 one.
func (c Clients) Contains(addr netip.Addr, local bool) bool {
	if local {
		return c.Local
	}
	addr = addr.Unmap()
	for _, p := range c.Nets {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// String is the set as the brace notation writes it: items joined by '|'.
func (c Clients) String() string {
	var items []string
	for _, p := range c.Nets {
		items = append(items, p.String())
	}
	if c.Local {
		items = append(items, LocalClients)
	}
	return strings.Join(items, "|")
}
