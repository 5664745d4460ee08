package milter

import "testing"

func TestParseSpec(t *testing.T) {
	good := []struct{ in, network, addr string }{
		{"unix:/run/opendkim.sock", "unix", "/run/opendkim.sock"},
		{"local:/var/run/x.sock", "unix", "/var/run/x.sock"},
		{"/run/y.sock", "unix", "/run/y.sock"},
		{"inet:127.0.0.1:8891", "tcp4", "127.0.0.1:8891"},
		{"inet:8891@127.0.0.1", "tcp4", "127.0.0.1:8891"},
		{"inet:8891", "tcp4", "127.0.0.1:8891"},
		{"inet:localhost:11332", "tcp4", "localhost:11332"},
		{"INET:8891@localhost", "tcp4", "localhost:8891"},
		{"inet6:[::1]:8891", "tcp6", "[::1]:8891"},
		{"inet6:8891@::1", "tcp6", "[::1]:8891"},
		{"inet6:8891", "tcp6", "[::1]:8891"},
	}
	for _, c := range good {
		s, err := ParseSpec(c.in)
		if err != nil {
			t.Errorf("ParseSpec(%q): %v", c.in, err)
			continue
		}
		if s.Network != c.network || s.Address != c.addr {
			t.Errorf("ParseSpec(%q) = %s %s, want %s %s", c.in, s.Network, s.Address, c.network, c.addr)
		}
	}
	for _, in := range []string{"", "tcp:1.2.3.4:5", "inet:", "inet:host:", "inet:host:0", "inet:host:70000",
		"inet:a:b:c", "unix:", "inet6:::1:25", "inet:@host", "8891"} {
		if s, err := ParseSpec(in); err == nil {
			t.Errorf("ParseSpec(%q) = %+v, want an error", in, s)
		}
	}
}

func TestSpecString(t *testing.T) {
	for in, want := range map[string]string{
		"inet:8891@127.0.0.1": "inet:127.0.0.1:8891",
		"local:/x":            "unix:/x",
		"inet6:8891@::1":      "inet6:[::1]:8891",
	} {
		s, err := ParseSpec(in)
		if err != nil || s.String() != want {
			t.Errorf("ParseSpec(%q).String() = %q (%v), want %q", in, s.String(), err, want)
		}
	}
}
