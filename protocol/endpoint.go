package protocol

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
)

// Endpoint is one end of a connection as link-connect reports it.
type Endpoint struct {
	Family string // "inet", "inet6" or "unix"
	Addr   string // an IP address in its canonical form, or a socket path
	Port   uint16 // 0 for "unix"
}

// ParseEndpoint parses a link-connect src or dest: "1.2.3.4:25",
// "[::1]:2525" or "unix:/var/run/smtpd.sock" (local enqueue reports the
// socket for both ends).
//
// An IPv4-mapped IPv6 address ("[::ffff:1.2.3.4]:25") is reported as the
// IPv4 address with Family "inet": that is the client's real address, and
// what a milter expects to see. The filter request of the connect phase
// carries the client address without a port ("127.0.0.1", "[::1]",
// "local"); it is not an endpoint.
func ParseEndpoint(s string) (Endpoint, error) {
	if path, ok := strings.CutPrefix(s, "unix:"); ok {
		if path == "" {
			return Endpoint{}, endpointError(s)
		}
		return Endpoint{Family: "unix", Addr: path}, nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return Endpoint{}, endpointError(s)
	}
	addr := ap.Addr().Unmap()
	family := "inet6"
	if addr.Is4() {
		family = "inet"
	}
	return Endpoint{Family: family, Addr: addr.String(), Port: ap.Port()}, nil
}

func endpointError(s string) error {
	if len(s) > maxQuote {
		s = s[:maxQuote] + "..."
	}
	return errors.New("protocol: bad endpoint " + strconv.Quote(s) + ": want a.b.c.d:port, [ipv6]:port or unix:path")
}
