package config

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

const traceConfig = `
trace_clients = ["198.51.100.7", "192.0.2.0/24", "2001:db8::/32", "::ffff:203.0.113.9"]
trace_content = true

[[milter]]
socket = "inet:127.0.0.1:8891"
`

func TestTraceSettingsFromTheFile(t *testing.T) {
	s, _, err := parseArgs(t, "-config", writeConfig(t, traceConfig))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("198.51.100.7/32"), netip.MustParsePrefix("192.0.2.0/24"),
		netip.MustParsePrefix("2001:db8::/32"), netip.MustParsePrefix("203.0.113.9/32")}
	if !reflect.DeepEqual(s.Trace.Clients, want) || !s.Trace.Content {
		t.Errorf("trace settings %+v, want clients %v and content", s.Trace, want)
	}
	if g := s.GatewayConfig(nil, nil); !reflect.DeepEqual(g.Trace, s.Trace) {
		t.Errorf("the gateway's trace settings %+v, want %+v", g.Trace, s.Trace)
	}
}

func TestTraceFlagsOverrideTheFile(t *testing.T) {
	s, _, err := parseArgs(t, "-config", writeConfig(t, traceConfig), "-trace-clients", "10.0.0.0/8, 10.1.2.3", "-trace-content=false")
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.1.2.3/32")}
	if !reflect.DeepEqual(s.Trace.Clients, want) || s.Trace.Content {
		t.Errorf("trace settings %+v, want clients %v and no content", s.Trace, want)
	}
}

func TestTraceClientsErrors(t *testing.T) {
	path := writeConfig(t, "\ntrace_clients = [\"192.0.2.0/24\", \"mail.example.org\"]\n[[milter]]\nsocket = \"inet:1\"\n")
	_, _, err := parseArgs(t, "-config", path)
	if err == nil || !strings.Contains(err.Error(), path+":2: key trace_clients:") || !strings.Contains(err.Error(), "mail.example.org") {
		t.Errorf("error %v, want one naming the file, line 2, the key and the value", err)
	}
	if _, _, err := parseArgs(t, "-trace-clients", "192.0.2.0/33", "-milter", "inet:1"); err == nil || !strings.Contains(err.Error(), "192.0.2.0/33") {
		t.Errorf("-trace-clients with a bad network: error %v", err)
	}
}
