package protocol

import (
	"strconv"
	"strings"

	"github.com/filter-milter/filter-milter/compat"
)

// The typed reports that Report.Decode returns, one per smtp-in event,
// with their fields as smtpd writes them.
type (
	// LinkConnect: a client connected. RDNS is the PTR name, or
	// "<unknown>" when there is none (not "" as smtpd-filters(7) says).
	// FCRDNS is "pass", "fail" or "error". Src and Dest are "a.b.c.d:port",
	// "[v6]:port" or "unix:/var/run/smtpd.sock" for local enqueue; see
	// ParseEndpoint.
	LinkConnect struct{ RDNS, FCRDNS, Src, Dest string }
	// LinkGreeting: smtpd sent its banner as Hostname.
	LinkGreeting struct{ Hostname string }
	// LinkIdentify: HELO or EHLO (Method) was accepted with Identity.
	LinkIdentify struct{ Method, Identity string }
	// LinkTLS: TLS is up; Info is "TLSv1.3:TLS_AES_256_GCM_SHA384:256",
	// see SplitTLS.
	LinkTLS struct{ Info string }
	// LinkAuth: an AUTH attempt ended; Result is "pass", "fail" or
	// "error". Username may contain '|'.
	LinkAuth struct{ Result, Username string }
	// LinkDisconnect: the session is over; always its last event.
	LinkDisconnect struct{}
	// TxBegin: a transaction got its message id, after MAIL FROM passed
	// the filters.
	TxBegin struct{ MsgID string }
	// TxMail: the sender, as the client gave it (not as a filter rewrote
	// it), without '<>' or ESMTP parameters; "" for the null sender.
	// Result is "ok", "permfail" or "tempfail"; on failure MsgID is
	// "00000000".
	TxMail struct{ MsgID, Result, Address string }
	// TxRcpt: a recipient, like TxMail.
	TxRcpt struct{ MsgID, Result, Address string }
	// TxEnvelope: a recipient was accepted as envelope EnvelopeID.
	TxEnvelope struct{ MsgID, EnvelopeID string }
	// TxData: DATA was answered with Result.
	TxData struct{ MsgID, Result string }
	// TxCommit: the message was queued, Size bytes.
	TxCommit struct {
		MsgID string
		Size  int64
	}
	// TxReset: the transaction is over (after commit, rollback or RSET).
	TxReset struct{ MsgID string }
	// TxRollback: the transaction was abandoned.
	TxRollback struct{ MsgID string }
	// ProtocolClient: a line the client sent, raw (it may contain '|'
	// and trailing spaces); AUTH credentials are masked as "********".
	ProtocolClient struct{ Command string }
	// ProtocolServer: one line of smtpd's reply (a multi-line reply gives
	// one event per line).
	ProtocolServer struct{ Response string }
	// FilterResponse: the filter chain's decision for Phase. smtpd names
	// the phases "connected" and "tls" here, not "connect" and
	// "starttls" as in requests. Param is "" for proceed and junk.
	FilterResponse struct{ Phase, Response, Param string }
	// Timeout: the client was idle too long; the session ends next.
	Timeout struct{}
	// Unhandled is an event this package has no type for.
	Unhandled struct{ Event Event }
)

// Decode returns the typed value of r: one of the types above, with the
// fields in the order of r's protocol version (see compat.Layout).
//
// An event this package does not know gives Unhandled and no error:
// smtpd adds events over time, and a filter must not stop on them. A
// known event with fewer fields than it has gives a *ParseError. The last
// field of an event absorbs any further '|', since that is where smtpd
// puts the fields that may contain one. For the events whose fields moved
// between versions the split is made at the separator next to the field
// that cannot contain '|' (the result), so a '|' in an address or a user
// name is kept in either order.
func (r Report) Decode() (any, error) {
	l := compat.For(r.Version)
	p := r.Params
	switch r.Event {
	case EventLinkConnect:
		var f [3]string
		dest, ok := cutFields(p, f[:])
		if !ok {
			return nil, r.fieldError("rdns|fcrdns|src|dest")
		}
		return LinkConnect{RDNS: f[0], FCRDNS: f[1], Src: f[2], Dest: dest}, nil
	case EventLinkGreeting:
		return LinkGreeting{Hostname: p}, nil
	case EventLinkIdentify:
		method, identity, ok := strings.Cut(p, "|")
		if !ok {
			return nil, r.fieldError("method|identity")
		}
		return LinkIdentify{Method: method, Identity: identity}, nil
	case EventLinkTLS:
		return LinkTLS{Info: p}, nil
	case EventLinkAuth:
		if l.AuthUserBeforeResult {
			i := strings.LastIndexByte(p, '|')
			if i < 0 {
				return nil, r.fieldError("username|result")
			}
			return LinkAuth{Result: p[i+1:], Username: p[:i]}, nil
		}
		result, user, ok := strings.Cut(p, "|")
		if !ok {
			return nil, r.fieldError("result|username")
		}
		return LinkAuth{Result: result, Username: user}, nil
	case EventLinkDisconnect:
		return LinkDisconnect{}, nil
	case EventTxBegin:
		return TxBegin{MsgID: p}, nil
	case EventTxMail, EventTxRcpt:
		id, result, addr, ok := splitTxAddress(p, l.TxAddressBeforeResult)
		if !ok {
			if l.TxAddressBeforeResult {
				return nil, r.fieldError("msgid|address|result")
			}
			return nil, r.fieldError("msgid|result|address")
		}
		if r.Event == EventTxMail {
			return TxMail{MsgID: id, Result: result, Address: addr}, nil
		}
		return TxRcpt{MsgID: id, Result: result, Address: addr}, nil
	case EventTxEnvelope:
		id, evp, ok := strings.Cut(p, "|")
		if !ok {
			return nil, r.fieldError("msgid|envelope-id")
		}
		return TxEnvelope{MsgID: id, EnvelopeID: evp}, nil
	case EventTxData:
		id, result, ok := strings.Cut(p, "|")
		if !ok {
			return nil, r.fieldError("msgid|result")
		}
		return TxData{MsgID: id, Result: result}, nil
	case EventTxCommit:
		id, size, ok := strings.Cut(p, "|")
		n, err := strconv.ParseInt(size, 10, 64)
		if !ok || err != nil || n < 0 {
			return nil, r.fieldError("msgid|size")
		}
		return TxCommit{MsgID: id, Size: n}, nil
	case EventTxReset:
		return TxReset{MsgID: p}, nil
	case EventTxRollback:
		return TxRollback{MsgID: p}, nil
	case EventProtocolClient:
		return ProtocolClient{Command: p}, nil
	case EventProtocolServer:
		return ProtocolServer{Response: p}, nil
	case EventFilterResponse:
		phase, rest, ok := strings.Cut(p, "|")
		if !ok {
			return nil, r.fieldError("phase|response[|param]")
		}
		response, param, _ := strings.Cut(rest, "|")
		return FilterResponse{Phase: phase, Response: response, Param: param}, nil
	case EventTimeout:
		return Timeout{}, nil
	}
	return Unhandled{Event: r.Event}, nil
}

// splitTxAddress splits the fields of tx-mail and tx-rcpt. From 0.6 the
// address is last and keeps any '|'; before, it sits between the message
// id and the result, so the result is cut at the last '|'.
func splitTxAddress(p string, addressFirst bool) (id, result, addr string, ok bool) {
	id, rest, ok := strings.Cut(p, "|")
	if !ok {
		return "", "", "", false
	}
	if addressFirst {
		i := strings.LastIndexByte(rest, '|')
		if i < 0 {
			return "", "", "", false
		}
		return id, rest[i+1:], rest[:i], true
	}
	result, addr, ok = strings.Cut(rest, "|")
	return id, result, addr, ok
}

// fieldError names the report, rebuilt as smtpd sent it, and the fields
// its event should have.
func (r Report) fieldError(want string) error {
	line := "report|" + r.Version.String() + "|" + r.Timestamp + "|" + r.Subsystem + "|" + string(r.Event) + "|" + r.Session
	if r.Params != "" {
		line += "|" + r.Params
	}
	return newParseError(line, string(r.Event)+" wants "+want)
}
