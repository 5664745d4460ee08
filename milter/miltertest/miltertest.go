// Package miltertest runs an in-process milter (go-milter's server side)
// on a loopback socket for unit tests: it records what the MTA sent and
// answers as a test scripts it. Integration tests use real milters instead.
package miltertest

import (
	"net"
	"strings"
	"sync"
	"testing"

	djmilter "github.com/d--j/go-milter"
)

// Seen is what the milter received in one connection.
type Seen struct {
	Host, Family, Addr string
	Port               uint16
	Helo               string
	From, FromArgs     string
	Rcpts              []string
	RcptArgs           []string
	Headers            [][2]string // name, value as received
	Body               []byte
	Macros             map[string]string // macro values seen at end of message
	EOM                int
	Aborts             int
}

// Script answers the milter's callbacks; nil fields mean continue.
type Script struct {
	Connect, Helo, Data, Header, EOH, Body func() (*djmilter.Response, error)
	Mail                                   func(from string) (*djmilter.Response, error)
	Rcpt                                   func(rcpt string) (*djmilter.Response, error)
	// EOM may call modifier methods (AddHeader, ...) before answering.
	EOM func(m djmilter.Modifier) (*djmilter.Response, error)
}

// Server is a running in-process milter.
type Server struct {
	Spec string // "inet:127.0.0.1:port" for the gateway's -milter
	mu   sync.Mutex
	seen []*Seen
	stop func()
}

// Stop closes the listener and every connection, as a milter that dies.
func (s *Server) Stop() { s.stop() }

// Start runs a milter with the given script and server options (protocol
// flags, actions) on 127.0.0.1 until the test ends.
func Start(t testing.TB, script Script, opts ...djmilter.Option) *Server {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &Server{Spec: "inet:" + ln.Addr().String()}
	opts = append([]djmilter.Option{
		djmilter.WithMilter(func() djmilter.Milter {
			s := &Seen{Macros: map[string]string{}}
			srv.mu.Lock()
			srv.seen = append(srv.seen, s)
			srv.mu.Unlock()
			return &backend{srv: srv, s: s, script: script}
		}),
		djmilter.WithActions(djmilter.AllClientSupportedActionMasks),
	}, opts...)
	ms := djmilter.NewServer(opts...)
	done := make(chan struct{})
	go func() { _ = ms.Serve(ln); close(done) }()
	var once sync.Once
	srv.stop = func() { once.Do(func() { _ = ms.Close(); <-done }) }
	t.Cleanup(srv.stop)
	return srv
}

// Seen returns a copy of what each connection received so far.
func (s *Server) Seen() []Seen {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Seen, len(s.seen))
	for i, v := range s.seen {
		out[i] = *v
		out[i].Rcpts = append([]string(nil), v.Rcpts...)
		out[i].Headers = append([][2]string(nil), v.Headers...)
		out[i].Body = append([]byte(nil), v.Body...)
		out[i].Macros = map[string]string{}
		for k, val := range v.Macros {
			out[i].Macros[k] = val
		}
	}
	return out
}

type backend struct {
	srv    *Server
	s      *Seen
	script Script
}

func answer(f func() (*djmilter.Response, error)) (*djmilter.Response, error) {
	if f == nil {
		return djmilter.RespContinue, nil
	}
	return f()
}

// record updates what was seen under the lock; scripts run without it, so
// that a script that blocks holds up only its own connection.
func (b *backend) record(f func()) {
	b.srv.mu.Lock()
	f()
	b.srv.mu.Unlock()
}

func (b *backend) NewConnection(djmilter.Modifier) error { return nil }
func (b *backend) Connect(host, family string, port uint16, addr string, _ djmilter.Modifier) (*djmilter.Response, error) {
	b.record(func() { b.s.Host, b.s.Family, b.s.Port, b.s.Addr = host, family, port, addr })
	return answer(b.script.Connect)
}
func (b *backend) Helo(name string, _ djmilter.Modifier) (*djmilter.Response, error) {
	b.record(func() { b.s.Helo = name })
	return answer(b.script.Helo)
}
func (b *backend) MailFrom(from, args string, _ djmilter.Modifier) (*djmilter.Response, error) {
	b.record(func() { b.s.From, b.s.FromArgs = from, args })
	if b.script.Mail == nil {
		return djmilter.RespContinue, nil
	}
	return b.script.Mail(from)
}
func (b *backend) RcptTo(rcpt, args string, _ djmilter.Modifier) (*djmilter.Response, error) {
	b.record(func() {
		b.s.Rcpts = append(b.s.Rcpts, rcpt)
		b.s.RcptArgs = append(b.s.RcptArgs, args)
	})
	if b.script.Rcpt == nil {
		return djmilter.RespContinue, nil
	}
	return b.script.Rcpt(rcpt)
}
func (b *backend) Data(djmilter.Modifier) (*djmilter.Response, error) { return answer(b.script.Data) }
func (b *backend) Header(name, value string, _ djmilter.Modifier) (*djmilter.Response, error) {
	b.record(func() { b.s.Headers = append(b.s.Headers, [2]string{name, value}) })
	return answer(b.script.Header)
}
func (b *backend) Headers(djmilter.Modifier) (*djmilter.Response, error) { return answer(b.script.EOH) }
func (b *backend) BodyChunk(chunk []byte, _ djmilter.Modifier) (*djmilter.Response, error) {
	b.record(func() { b.s.Body = append(b.s.Body, chunk...) })
	return answer(b.script.Body)
}
func (b *backend) EndOfMessage(m djmilter.Modifier) (*djmilter.Response, error) {
	b.srv.mu.Lock()
	b.s.EOM++
	for _, name := range []string{"i", "j", "{daemon_name}", "{client_addr}", "{client_port}", "{client_name}",
		"{mail_addr}", "{rcpt_addr}", "{auth_authen}", "{auth_type}", "{tls_version}", "{cipher}"} {
		if v, ok := m.GetEx(name); ok {
			b.s.Macros[strings.Trim(name, "{}")] = v
		}
	}
	b.srv.mu.Unlock()
	if b.script.EOM == nil {
		return djmilter.RespAccept, nil
	}
	return b.script.EOM(m)
}
func (b *backend) Abort(djmilter.Modifier) error {
	b.record(func() { b.s.Aborts++ })
	return nil
}
func (b *backend) Unknown(string, djmilter.Modifier) (*djmilter.Response, error) {
	return djmilter.RespContinue, nil
}
func (b *backend) Cleanup(djmilter.Modifier) {}
