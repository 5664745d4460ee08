package milter

import (
	"sync"

	djmilter "github.com/d--j/go-milter"
)

// Macro names, as milters look them up: one-character names bare, longer
// ones in braces (libmilter maps x to {x} only for one-character names, so
// an unbraced long name is never found).
const (
	MacroQueueID     = "i"
	MacroMTAName     = "j"
	MacroMTAVersion  = "v"
	MacroClientInfo  = "_" // Sendmail's "name [addr]" of the client
	MacroDaemonName  = "{daemon_name}"
	MacroDaemonAddr  = "{daemon_addr}"
	MacroDaemonPort  = "{daemon_port}"
	MacroIfAddr      = "{if_addr}"
	MacroClientAddr  = "{client_addr}"
	MacroClientPort  = "{client_port}"
	MacroClientName  = "{client_name}"
	MacroClientPTR   = "{client_ptr}"
	MacroTLSVersion  = "{tls_version}"
	MacroCipher      = "{cipher}"
	MacroCipherBits  = "{cipher_bits}"
	MacroCertSubject = "{cert_subject}"
	MacroCertIssuer  = "{cert_issuer}"
	MacroAuthType    = "{auth_type}"
	MacroAuthAuthen  = "{auth_authen}"
	MacroAuthAuthor  = "{auth_author}"
	MacroAuthSSF     = "{auth_ssf}"
	MacroMailAddr    = "{mail_addr}"
	MacroMailHost    = "{mail_host}"
	MacroMailMailer  = "{mail_mailer}"
	MacroRcptAddr    = "{rcpt_addr}"
	MacroRcptHost    = "{rcpt_host}"
	MacroRcptMailer  = "{rcpt_mailer}"
)

// Macros holds one SMTP session's macro values; every milter session of
// that SMTP session reads them when it sends a stage. It is safe for
// concurrent use. It implements go-milter's Macros.
type Macros struct {
	mu sync.RWMutex
	m  map[string]string
}

// NewMacros returns an empty set.
func NewMacros() *Macros { return &Macros{m: make(map[string]string, 16)} }

// Set sets a macro; an empty value removes it, so that it is not sent.
func (m *Macros) Set(name, value string) {
	m.mu.Lock()
	if value == "" {
		delete(m.m, name)
	} else {
		m.m[name] = value
	}
	m.mu.Unlock()
}

// Get returns a macro's value, "" when unset.
func (m *Macros) Get(name string) string {
	v, _ := m.GetEx(name)
	return v
}

// GetEx returns a macro's value and whether it is set.
func (m *Macros) GetEx(name string) (string, bool) {
	m.mu.RLock()
	v, ok := m.m[name]
	m.mu.RUnlock()
	return v, ok
}

var _ djmilter.Macros = (*Macros)(nil)
