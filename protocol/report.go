package protocol

import (
	"net/netip"
	"strconv"
	"strings"

	"github.com/filter-milter/filter-milter/compat"
)

// The typed reports that Report.Decode returns.
type (
	LinkConnect    struct{ RDNS, FCRDNS, Src, Dest string } // RDNS is "<unknown>" without PTR
	LinkGreeting   struct{ Hostname string }
	LinkIdentify   struct{ Method, Identity string }
	LinkTLS        struct{ Info string } // "TLSv1.3:TLS_AES_256_GCM_SHA384:256"
	LinkAuth       struct{ Result, Username string }
	LinkDisconnect struct{}
	TxBegin        struct{ MsgID string }
	TxMail         struct{ MsgID, Result, Address string }
	TxRcpt         struct{ MsgID, Result, Address string }
	TxEnvelope     struct{ MsgID, EnvelopeID string }
	TxData         struct{ MsgID, Result string }
	TxCommit       struct {
		MsgID string
		Size  int64
	}
	TxReset        struct{ MsgID string }
	TxRollback     struct{ MsgID string }
	ProtocolClient struct{ Command string }
	ProtocolServer struct{ Response string }
	FilterResponse struct{ Phase, Response, Param string }
	Timeout        struct{}
	// Unhandled is an event this package has no type for.
	Unhandled struct{ Event string }
)

// Decode returns the typed value of a report, with its fields in the order
// of the report's protocol version.
func (r Report) Decode() (any, error) {
	l := compat.For(r.Version)
	p := r.Params
	bad := func(want string) (any, error) {
		return nil, &ParseError{Line: r.Event + "|" + truncate(p), Reason: "want " + want}
	}
	switch r.Event {
	case "link-connect":
		f := strings.SplitN(p, "|", 4)
		if len(f) != 4 {
			return bad("rdns|fcrdns|src|dest")
		}
		return LinkConnect{f[0], f[1], f[2], f[3]}, nil
	case "link-greeting":
		return LinkGreeting{p}, nil
	case "link-identify":
		m, id, ok := strings.Cut(p, "|")
		if !ok {
			return bad("method|identity")
		}
		return LinkIdentify{m, id}, nil
	case "link-tls":
		return LinkTLS{p}, nil
	case "link-auth":
		// The user name may contain '|': split at the separator next to
		// the result, whichever side the version puts it.
		if l.AuthUserBeforeResult {
			i := strings.LastIndexByte(p, '|')
			if i < 0 {
				return bad("username|result")
			}
			return LinkAuth{Result: p[i+1:], Username: p[:i]}, nil
		}
		res, user, ok := strings.Cut(p, "|")
		if !ok {
			return bad("result|username")
		}
		return LinkAuth{Result: res, Username: user}, nil
	case "link-disconnect":
		return LinkDisconnect{}, nil
	case "tx-begin":
		return TxBegin{p}, nil
	case "tx-mail", "tx-rcpt":
		id, rest, ok := strings.Cut(p, "|")
		if !ok {
			return bad("msgid|result|address")
		}
		var res, addr string
		if l.TxAddressBeforeResult {
			i := strings.LastIndexByte(rest, '|')
			if i < 0 {
				return bad("msgid|address|result")
			}
			addr, res = rest[:i], rest[i+1:]
		} else if res, addr, ok = strings.Cut(rest, "|"); !ok {
			return bad("msgid|result|address")
		}
		if r.Event == "tx-mail" {
			return TxMail{id, res, addr}, nil
		}
		return TxRcpt{id, res, addr}, nil
	case "tx-envelope":
		id, evp, ok := strings.Cut(p, "|")
		if !ok {
			return bad("msgid|envelope-id")
		}
		return TxEnvelope{id, evp}, nil
	case "tx-data":
		id, res, ok := strings.Cut(p, "|")
		if !ok {
			return bad("msgid|result")
		}
		return TxData{id, res}, nil
	case "tx-commit":
		id, size, ok := strings.Cut(p, "|")
		n, err := strconv.ParseInt(size, 10, 64)
		if !ok || err != nil {
			return bad("msgid|size")
		}
		return TxCommit{id, n}, nil
	case "tx-reset":
		return TxReset{p}, nil
	case "tx-rollback":
		return TxRollback{p}, nil
	case "protocol-client":
		return ProtocolClient{p}, nil
	case "protocol-server":
		return ProtocolServer{p}, nil
	case "filter-response":
		f := strings.SplitN(p, "|", 3)
		if len(f) < 2 {
			return bad("phase|response[|param]")
		}
		fr := FilterResponse{Phase: f[0], Response: f[1]}
		if len(f) == 3 {
			fr.Param = f[2]
		}
		return fr, nil
	case "timeout":
		return Timeout{}, nil
	}
	return Unhandled{r.Event}, nil
}

func truncate(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// SplitTLS splits link-tls's "TLSv1.3:TLS_AES_256_GCM_SHA384:256" into the
// TLS version, cipher and bits.
func SplitTLS(info string) (version, cipher, bits string, ok bool) {
	i := strings.IndexByte(info, ':')
	j := strings.LastIndexByte(info, ':')
	if i < 0 || j <= i {
		return "", "", "", false
	}
	return info[:i], info[i+1 : j], info[j+1:], true
}

// Endpoint is a link-connect address.
type Endpoint struct {
	Family string // "inet", "inet6" or "unix"
	Addr   string // an IP address or a socket path
	Port   uint16
}

// ParseEndpoint reads "1.2.3.4:25", "[::1]:2525" or "unix:/path".
func ParseEndpoint(s string) (Endpoint, error) {
	if path, ok := strings.CutPrefix(s, "unix:"); ok {
		return Endpoint{Family: "unix", Addr: path}, nil
	}
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return Endpoint{}, &ParseError{Line: s, Reason: "not an address:port or unix:path"}
	}
	fam := "inet"
	if ap.Addr().Is6() && !ap.Addr().Is4In6() {
		fam = "inet6"
	}
	return Endpoint{Family: fam, Addr: ap.Addr().String(), Port: ap.Port()}, nil
}

// ESMTPParams returns the parameters after the address of a raw MAIL or
// RCPT command line ("MAIL FROM:<a@b> SIZE=12 BODY=8BITMIME"): the filter
// request carries the address only, and milters want the parameters too.
func ESMTPParams(command string) []string {
	c := strings.TrimSpace(command)
	if len(c) < 4 {
		return nil
	}
	verb := strings.ToUpper(c[:4])
	if verb != "MAIL" && verb != "RCPT" {
		return nil
	}
	end := strings.IndexByte(c, '>')
	if end < 0 {
		return nil
	}
	f := strings.Fields(c[end+1:])
	if len(f) == 0 {
		return nil
	}
	return f
}
