package milter

import (
	"fmt"
	"net"
	"time"

	djmilter "github.com/d--j/go-milter"
	"go.uber.org/zap"
)

// Options configure one milter.
type Options struct {
	ConnectTimeout time.Duration // dial and negotiation
	CommandTimeout time.Duration // CONNECT, HELO, MAIL, RCPT, DATA (Postfix: milter_command_timeout)
	ContentTimeout time.Duration // HEADER, EOH, BODY, end of message (Postfix: milter_content_timeout)
	MaxPacket      uint32        // the largest packet accepted from the milter
	Version        uint32        // the highest protocol version offered (2 to 6; 0 means 6)
	// EOMTimeout bounds the whole of end of message, from SMFIC_BODYEOB to
	// the final reply, however many PROGRESS packets the milter sends
	// (Sendmail's T=E; ContentTimeout still bounds each packet).
	EOMTimeout time.Duration
	// MaxModifications and MaxModificationBytes bound what one milter may
	// ask for at one end of message: the number of modification packets
	// and the bytes of their payloads (replacement body included). Over
	// either is a protocol error: that milter's default action.
	MaxModifications     int
	MaxModificationBytes int64
	// Macros are the macro lists per stage, macro_defaults and macro_v;
	// nil, or a nil list, is DefaultMacroLists (for that stage). A
	// pointer, so that Options stay comparable; shared, never changed.
	Macros *MacroConfig
}

// DefaultOptions are Postfix's defaults.
var DefaultOptions = Options{
	ConnectTimeout: 30 * time.Second,
	CommandTimeout: 30 * time.Second,
	ContentTimeout: 300 * time.Second,
	MaxPacket:      64 << 20,
	// Sendmail's T=E default is 5 minutes; a milter that keeps sending
	// PROGRESS (a virus scanner on a large message) gets twice that.
	EOMTimeout: 10 * time.Minute,
	// opendkim sends one header, rspamd and spamass-milter a few dozen;
	// a replacement body is about the size of the message (smtpd's
	// default limit is 35 MB).
	MaxModifications:     10000,
	MaxModificationBytes: 64 << 20,
}

// Client opens milter sessions to one milter. It is safe for concurrent use.
type Client struct {
	Name      string // for logs: the spec as the postmaster wrote it
	Spec      Spec
	opts      Options
	log       *zap.Logger
	djOptions []djmilter.Option
	symlists  [numMacroStages]string // the configured macro lists as the negotiation answer carries them
}

// NewClient prepares a client; nothing is dialled until Open. log gets
// what the client corrects or ignores in what the milter sends (a macro
// list it cannot use, DISCARD at CONNECT), with the client's name; nil
// means no log.
func NewClient(name string, spec Spec, opts Options, log *zap.Logger) *Client {
	if opts.MaxPacket == 0 {
		opts.MaxPacket = DefaultOptions.MaxPacket
	}
	if opts.EOMTimeout == 0 {
		opts.EOMTimeout = DefaultOptions.EOMTimeout
	}
	if opts.MaxModifications == 0 {
		opts.MaxModifications = DefaultOptions.MaxModifications
	}
	if opts.MaxModificationBytes == 0 {
		opts.MaxModificationBytes = DefaultOptions.MaxModificationBytes
	}
	if log == nil {
		log = zap.NewNop()
	}
	opts.Macros = opts.Macros.resolved()
	offered := offer(opts.Version)
	protocol := djmilter.OptProtocol(offered.Protocol)
	if offered.Version >= 6 {
		protocol = 0 // go-milter then offers every flag it knows for version 6: protoV6 (TestOfferIsWhatSessionsOffer)
	}
	return &Client{Name: name, Spec: spec, opts: opts, log: log.With(zap.String("milter", name)), symlists: opts.Macros.Lists.wire(), djOptions: []djmilter.Option{
		djmilter.WithMaximumVersion(offered.Version),
		djmilter.WithProtocols(protocol),
		djmilter.WithActions(djmilter.OptAction(offered.Actions)),
		// go-milter applies a deadline only when its timeout is not zero;
		// conn replaces the value with the current stage's own timeout.
		djmilter.WithReadTimeout(time.Hour),
		djmilter.WithWriteTimeout(time.Hour),
		// conn hands go-milter a list for every stage (completeSymlists).
		djmilter.WithoutDefaultMacros(),
	}}
}

// connDialer hands go-milter the connection Open has already dialled, so
// that Open keeps the *conn whose timeouts it sets per stage.
type connDialer struct{ c net.Conn }

func (d connDialer) Dial(string, string) (net.Conn, error) { return d.c, nil }

// Open dials the milter and negotiates. macros is read at each stage, so
// values set later (the queue id after MAIL) still reach the milter.
func (c *Client) Open(macros *Macros) (*Session, error) {
	nc, err := (&net.Dialer{Timeout: c.opts.ConnectTimeout}).Dial(c.Spec.Network, c.Spec.Address)
	if err != nil {
		return nil, fmt.Errorf("milter %s: connect: %w", c.Name, err)
	}
	return c.openOn(nc, macros)
}

// openOn negotiates on a connection that is already open.
func (c *Client) openOn(nc net.Conn, macros *Macros) (*Session, error) {
	mc := newConn(nc, c.opts.ConnectTimeout, c.opts.MaxPacket, c.log)
	mc.symlists = &c.symlists
	opts := append(c.djOptions[:len(c.djOptions):len(c.djOptions)], djmilter.WithDialer(connDialer{mc}))
	dj, err := djmilter.NewClient(c.Spec.Network, c.Spec.Address, opts...).Session(milterMacros{session: macros, cfg: c.opts.Macros})
	if err != nil {
		_ = mc.Close()
		return nil, fmt.Errorf("milter %s: negotiate: %w", c.Name, err)
	}
	mc.phase = phaseReply
	for bit := uint32(1); bit <= actSetSymlist; bit <<= 1 {
		if dj.ActionOption(djmilter.OptAction(bit)) {
			mc.actions |= bit
		}
	}
	return &Session{
		c:            c,
		dj:           dj,
		conn:         mc,
		leadingSpace: dj.ProtocolOption(djmilter.OptHeaderLeadingSpace),
	}, nil
}

// Family is the kind of address a client connected from.
type Family byte

const (
	FamilyUnknown Family = Family(djmilter.FamilyUnknown)
	FamilyUnix    Family = Family(djmilter.FamilyUnix)
	FamilyInet    Family = Family(djmilter.FamilyInet)
	FamilyInet6   Family = Family(djmilter.FamilyInet6)
)
