package harness

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/emersion/go-msgauth/dkim"
)

// DKIMResult is go-msgauth's verdict on one DKIM-Signature.
type DKIMResult struct {
	Domain     string
	HeaderKeys []string
	Err        error // nil: the signature verifies
}

// Pass reports whether the signature verifies.
func (r DKIMResult) Pass() bool { return r.Err == nil }

func (r DKIMResult) String() string {
	v := "pass"
	if r.Err != nil {
		v = "FAIL: " + r.Err.Error()
	}
	return fmt.Sprintf("d=%s h=%s: %s", r.Domain, strings.Join(r.HeaderKeys, ":"), v)
}

// VerifyDKIM verifies every DKIM-Signature of msg with
// github.com/emersion/go-msgauth/dkim. Key records come from records (name
// → TXT value), never from DNS. LF line ends are turned into CRLF first, as
// on the wire; a message without a header/body separator gets one (an
// empty body either way).
func VerifyDKIM(msg []byte, records map[string]string) ([]DKIMResult, error) {
	m := bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n"))
	if _, rest := SplitMessage(m); rest == nil {
		if len(m) > 0 && m[len(m)-1] != '\n' {
			m = append(m, '\n')
		}
		m = append(m, '\n')
	}
	m = bytes.ReplaceAll(m, []byte("\n"), []byte("\r\n"))
	opts := &dkim.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			if v, ok := records[strings.TrimSuffix(strings.ToLower(name), ".")]; ok {
				return []string{v}, nil
			}
			return nil, fmt.Errorf("no TXT record %s in the test's key set", name)
		},
	}
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(m), opts)
	if err != nil {
		return nil, err
	}
	var out []DKIMResult
	for _, v := range vs {
		out = append(out, DKIMResult{Domain: v.Domain, HeaderKeys: v.HeaderKeys, Err: v.Err})
	}
	return out, nil
}
