package milter

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strconv"

	"go.uber.org/zap"
)

// A milter session's trace: every packet as it goes on the wire, each way,
// one debug line each with its command or reply name, its payload size
// and its payload escaped. It is taken from the socket's byte streams
// (conn's writeRaw and readRaw), below go-milter and conn's own
// corrections, so it shows what the milter was sent and what it sent.
// Message content (a header value, a body chunk, a replacement body) is
// shown as its size only, unless content is asked for.

// Trace logs every packet of the session from now on to log, at debug
// level; log says which SMTP session it is. content shows message content
// too. The negotiation, done when the session opened, is not in it
// (filter-milter check shows it). Calling it again with the same logger
// does nothing, so that it may be called before every command.
func (s *Session) Trace(log *zap.Logger, content bool) {
	if t := s.conn.trace; t != nil && t.log == log {
		return
	}
	s.conn.trace = &packetTrace{log: log, endpoint: s.c.Name, content: content}
}

// packetTrace is one session's trace: a parser of each direction's byte
// stream into packets.
type packetTrace struct {
	log      *zap.Logger
	endpoint string
	content  bool
	out, in  packetStream
}

// maxTracedPayload bounds the payload shown in one trace line (a body
// chunk is up to 64 KiB): syslog daemons cut longer lines (rsyslog at
// 8 KiB by default), and escaping can make a byte four. size always
// says the whole.
const maxTracedPayload = 4 << 10

// packetStream cuts one direction's bytes into packets: 4 bytes of
// length, the code, the payload.
type packetStream struct {
	hdr     [5]byte
	nhdr    int
	left    int    // payload bytes still to come
	size    int    // the packet's payload size
	payload []byte // the payload kept for the trace line
	keep    bool   // the payload is shown, not only its size
}

func (t *packetTrace) wrote(b []byte) { t.out.feed(b, t.content, commandNames, t.command) }
func (t *packetTrace) read(b []byte)  { t.in.feed(b, t.content, replyNames, t.reply) }

func (t *packetTrace) command(code byte, size int, payload []byte) {
	t.emit("milter command", commandNames, code, size, payload)
}

func (t *packetTrace) reply(code byte, size int, payload []byte) {
	t.emit("milter reply", replyNames, code, size, payload)
}

func (t *packetTrace) emit(msg string, names map[byte]packetKind, code byte, size int, payload []byte) {
	k := names[code]
	name := k.name
	if name == "" {
		name = fmt.Sprintf("unknown 0x%02x", code)
	}
	fields := []zap.Field{zap.String("endpoint", t.endpoint), zap.String("packet", name), zap.Int("size", size)}
	switch {
	case t.content || !k.content:
		fields = append(fields, zap.String("payload", escaped(payload)))
	case k.header:
		// The header's name is no content: only its value is elided.
		field, value := headerName(payload, k.indexed)
		fields = append(fields, zap.String("header", escaped(field)), zap.Int("elided", value))
	default:
		fields = append(fields, zap.Int("elided", size))
	}
	if len(payload) < size && (t.content || !k.content) {
		fields = append(fields, zap.Bool("truncated", true))
	}
	t.log.Debug(msg, fields...)
}

// escaped is b as a Go string literal without its quotes: every byte
// kept, those that are not printable UTF-8 (NUL, a port's binary bytes)
// as \x escapes, where the log's own escaping would replace them.
func escaped(b []byte) string {
	q := strconv.Quote(string(b))
	return q[1 : len(q)-1]
}

// headerName is the name in a header packet's payload, [index] name NUL
// value NUL, and the size of what follows it.
func headerName(payload []byte, indexed bool) (name []byte, value int) {
	if indexed {
		if len(payload) < 4 {
			return nil, len(payload)
		}
		payload = payload[4:]
	}
	if i := bytes.IndexByte(payload, 0); i >= 0 {
		return payload[:i], len(payload) - i - 1
	}
	return payload, 0
}

// feed takes the next bytes of the stream and calls emit for each packet
// it completes.
func (p *packetStream) feed(b []byte, content bool, names map[byte]packetKind, emit func(code byte, size int, payload []byte)) {
	for len(b) > 0 {
		if p.nhdr < len(p.hdr) {
			n := copy(p.hdr[p.nhdr:], b)
			p.nhdr += n
			b = b[n:]
			if p.nhdr == 4 && binary.BigEndian.Uint32(p.hdr[:4]) == 0 {
				emit(0, 0, nil) // no code: conn refuses it
				p.nhdr = 0
				continue
			}
			if p.nhdr < len(p.hdr) {
				continue
			}
			p.size = int(binary.BigEndian.Uint32(p.hdr[:4])) - 1
			p.left = p.size
			k := names[p.hdr[4]]
			p.keep = content || !k.content || k.header
			p.payload = p.payload[:0]
		}
		n := min(p.left, len(b))
		if p.keep && len(p.payload) < maxTracedPayload {
			p.payload = append(p.payload, b[:min(n, maxTracedPayload-len(p.payload))]...)
		}
		p.left -= n
		b = b[n:]
		if p.left == 0 {
			emit(p.hdr[4], p.size, p.payload)
			p.nhdr = 0
			if cap(p.payload) > 4<<10 {
				p.payload = nil // a body chunk's buffer is not kept for the session
			}
		}
	}
}

// packetKind names a packet code, and says whether its payload is
// message content.
type packetKind struct {
	name    string
	content bool // the payload is message content: shown as its size
	header  bool // a header: name shown, value elided
	indexed bool // a header with an index before its name
}

// commandNames are the SMFIC_* codes (libmilter's mfdef.h).
var commandNames = map[byte]packetKind{
	'A': {name: "SMFIC_ABORT"},
	'B': {name: "SMFIC_BODY", content: true},
	'C': {name: "SMFIC_CONNECT"},
	'D': {name: "SMFIC_MACRO"},
	'E': {name: "SMFIC_BODYEOB", content: true},
	'H': {name: "SMFIC_HELO"},
	'K': {name: "SMFIC_QUIT_NC"},
	'L': {name: "SMFIC_HEADER", content: true, header: true},
	'M': {name: "SMFIC_MAIL"},
	'N': {name: "SMFIC_EOH"},
	'O': {name: "SMFIC_OPTNEG"},
	'Q': {name: "SMFIC_QUIT"},
	'R': {name: "SMFIC_RCPT"},
	'T': {name: "SMFIC_DATA"},
	'U': {name: "SMFIC_UNKNOWN"},
}

// replyNames are the SMFIR_* codes.
var replyNames = map[byte]packetKind{
	'+': {name: "SMFIR_ADDRCPT"},
	'-': {name: "SMFIR_DELRCPT"},
	'2': {name: "SMFIR_ADDRCPT_PAR"},
	'4': {name: "SMFIR_SHUTDOWN"},
	'a': {name: "SMFIR_ACCEPT"},
	'b': {name: "SMFIR_REPLBODY", content: true},
	'c': {name: "SMFIR_CONTINUE"},
	'd': {name: "SMFIR_DISCARD"},
	'e': {name: "SMFIR_CHGFROM"},
	'f': {name: "SMFIR_CONN_FAIL"},
	'h': {name: "SMFIR_ADDHEADER", content: true, header: true},
	'i': {name: "SMFIR_INSHEADER", content: true, header: true, indexed: true},
	'l': {name: "SMFIR_SETSYMLIST"},
	'm': {name: "SMFIR_CHGHEADER", content: true, header: true, indexed: true},
	'O': {name: "SMFIC_OPTNEG"},
	'p': {name: "SMFIR_PROGRESS"},
	'q': {name: "SMFIR_QUARANTINE"},
	'r': {name: "SMFIR_REJECT"},
	's': {name: "SMFIR_SKIP"},
	't': {name: "SMFIR_TEMPFAIL"},
	'y': {name: "SMFIR_REPLYCODE"},
}
