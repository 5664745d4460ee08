package probe

import (
	"bytes"
	"strings"
	"testing"

	djmilter "github.com/d--j/go-milter"

	"github.com/filter-milter/filter-milter/milter"
	"github.com/filter-milter/filter-milter/milter/miltertest"
)

// TestCheckPrintsTheMacrosSent: check's macro lines are, per stage, the
// list that goes out (the milter's own for MAIL here, the configured one
// elsewhere) split by where each value comes from, and, apart, the names
// that are never sent; a macro_defaults entry no list names is reported.
func TestCheckPrintsTheMacrosSent(t *testing.T) {
	srv := miltertest.Start(t, miltertest.Script{},
		djmilter.WithMacroRequest(djmilter.StageMail, []string{"{i}", "{auth_author}", "{mail_mailer}"}))
	c, err := milter.ParseConfig(srv.Spec+"{connect_macros=j {cert_subject} v {rcpt_addr}, helo_macros=, "+
		"eom_macros=i {auth_type}, macro_defaults={mail_mailer}=smtp {auth_type}=none {unused}=u, macro_v=Test MTA 1.0}", milter.DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if !Milters(&out, []milter.Config{c}, "tempfail") {
		t.Fatalf("check failed:\n%s", out.String())
	}
	want := `  macros:         sent at each stage (* the milter's own list, else the configured one; [X]: only in sessions with X):
    connect  from smtpd: j
             from macro_v: v="Test MTA 1.0"
             never sent (no value at this stage): {cert_subject} {rcpt_addr}
    helo     nothing (an empty list)
   *mail     from macro_defaults: {mail_mailer}="smtp"
             never sent (no value at this stage): {i} {auth_author}
    rcpt     from smtpd: i {rcpt_addr} {rcpt_host}
    data     from smtpd: i
    eoh      from smtpd: i
    eom      from smtpd: i {auth_type}[AUTH, else "none"]
  macro_defaults: in no stage's list, never sent: {unused}
`
	got := out.String()
	if i := strings.Index(got, "  macros:"); i < 0 || !strings.HasPrefix(got[i:], want) {
		t.Errorf("check output\n%s\nwant the macros part\n%s", got, want)
	}
}
