package milter

import (
	"net/netip"
	"strings"
	"testing"
)

func TestClientsContains(t *testing.T) {
	c, err := ParseClients([]string{"192.0.2.0/24", "2001:db8::/32", "198.51.100.7", "::1"})
	if err != nil {
		t.Fatal(err)
	}
	for addr, want := range map[string]bool{
		"192.0.2.1": true, "192.0.3.1": false, "2001:db8::25": true, "2001:db9::1": false,
		"198.51.100.7": true, "198.51.100.8": false, "::1": true, "::ffff:192.0.2.9": true, // mapped: the IPv4 address
	} {
		if got := c.Contains(netip.MustParseAddr(addr), false); got != want {
			t.Errorf("%s in %s: %v, want %v", addr, c, got, want)
		}
	}
	if c.Contains(netip.Addr{}, false) {
		t.Error("an unknown address is in a set of networks")
	}
	if c.Contains(netip.Addr{}, true) {
		t.Error("a local client is in a set without local")
	}
	local, _ := ParseClients([]string{"local"})
	if !local.Contains(netip.Addr{}, true) || local.Contains(netip.MustParseAddr("127.0.0.1"), false) || local.Empty() {
		t.Errorf("local: %+v", local)
	}
	all, _ := ParseClients([]string{"0.0.0.0/0", "::/0"})
	if all.Contains(netip.Addr{}, true) {
		t.Error("a local client is in 0.0.0.0/0")
	}
}

func TestParseClientsErrors(t *testing.T) {
	for item, want := range map[string]string{
		"192.0.2.0/33": `"192.0.2.0/33": want a network`,
		"10.0.0.1/8":   "host bits set; did you mean 10.0.0.0/8?",
		"example.org":  `"example.org": want a network`,
		"fe80::1%eth0": `"fe80::1%eth0": want a network`,
		"":             `"": want a network`,
	} {
		if _, err := ParseClients([]string{"192.0.2.0/24", item}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", item, err, want)
		}
	}
}

func TestScopeSettings(t *testing.T) {
	c, err := ParseConfig("{ inet:127.0.0.1:8891, clients = 192.0.2.0/24|local, skip_clients=192.0.2.9, skip_authenticated=yes, evaluation=true }", DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	if c.Scope.Clients.String() != "192.0.2.0/24|local" || c.Scope.SkipClients.String() != "192.0.2.9/32" ||
		!c.Scope.SkipAuthenticated || !c.Scope.Evaluation {
		t.Errorf("scope %+v", c.Scope)
	}
	if _, err := ParseConfig("inet:1{clients=192.0.2.0/24,198.51.100.0/24}", DefaultOptions); err == nil ||
		!strings.Contains(err.Error(), `setting "198.51.100.0/24": want name=value`) {
		t.Errorf("networks separated by a comma: %v", err)
	}
}
