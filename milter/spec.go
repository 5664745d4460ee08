// Package milter is the MTA side of the milter protocol for filter-milter.
//
// It wraps github.com/d--j/go-milter's client behind a small interface of its
// own: socket specs in the notations postmasters know from Postfix and
// Sendmail, per-stage timeouts, a guard against oversized packets, the
// header leading-space rule, and neutral verdicts and modification lists
// that the gateway maps onto OpenSMTPD's filter protocol.
package milter

import (
	"fmt"
	"net"
	"strconv"
	"strings"
)

// Spec is a milter's socket address.
type Spec struct {
	Network string // "unix", "tcp4" or "tcp6"
	Address string // a socket path, or host:port
}

// ParseSpec reads the socket notations of Postfix and Sendmail:
//
//	unix:/path  local:/path  /path
//	inet:host:port  inet:port@host  inet:port (loopback)
//	inet6:[::1]:port  inet6:port@::1  inet6:port (loopback)
func ParseSpec(s string) (Spec, error) {
	kind, rest, found := strings.Cut(s, ":")
	if !found {
		if strings.HasPrefix(s, "/") {
			return Spec{Network: "unix", Address: s}, nil
		}
		return Spec{}, fmt.Errorf("milter spec %q: want unix:/path, inet:host:port, inet:port@host or inet6:...", s)
	}
	switch strings.ToLower(kind) {
	case "unix", "local":
		if rest == "" {
			return Spec{}, fmt.Errorf("milter spec %q: empty socket path", s)
		}
		return Spec{Network: "unix", Address: rest}, nil
	case "inet":
		host, port, err := splitHostPort(rest, "127.0.0.1")
		if err != nil {
			return Spec{}, fmt.Errorf("milter spec %q: %w", s, err)
		}
		return Spec{Network: "tcp4", Address: net.JoinHostPort(host, port)}, nil
	case "inet6":
		host, port, err := splitHostPort(rest, "::1")
		if err != nil {
			return Spec{}, fmt.Errorf("milter spec %q: %w", s, err)
		}
		return Spec{Network: "tcp6", Address: net.JoinHostPort(host, port)}, nil
	}
	return Spec{}, fmt.Errorf("milter spec %q: unknown socket type %q (want unix, local, inet or inet6)", s, kind)
}

// splitHostPort accepts Sendmail's "port@host", Postfix's "host:port",
// "[v6]:port" and a bare port, which means defaultHost.
func splitHostPort(s, defaultHost string) (host, port string, err error) {
	switch {
	case strings.Contains(s, "@"):
		port, host, _ = strings.Cut(s, "@")
	case strings.HasPrefix(s, "["):
		host, port, err = net.SplitHostPort(s)
		if err != nil {
			return "", "", err
		}
	case strings.Count(s, ":") == 1:
		host, port, _ = strings.Cut(s, ":")
	case !strings.Contains(s, ":"):
		host, port = defaultHost, s
	default:
		return "", "", fmt.Errorf("ambiguous address %q: write an IPv6 host as [addr]:port or port@addr", s)
	}
	host = strings.Trim(host, "[]")
	if host == "" {
		return "", "", fmt.Errorf("missing host in %q", s)
	}
	n, perr := strconv.Atoi(port)
	if perr != nil || n < 1 || n > 65535 {
		return "", "", fmt.Errorf("bad port %q", port)
	}
	return host, port, nil
}

// String gives the spec in Postfix notation, for logs.
func (s Spec) String() string {
	switch s.Network {
	case "unix":
		return "unix:" + s.Address
	case "tcp6":
		return "inet6:" + s.Address
	}
	return "inet:" + s.Address
}
