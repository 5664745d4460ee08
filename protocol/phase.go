package protocol

// Phase is a filter phase of smtpd, the phase field of a filter request and
// of a register|filter line (smtpd-filters(7); lka_filter.c, filter_execs).
type Phase string

// The phases smtpd sends requests for. A filter gets requests only for the
// phases it registered.
const (
	PhaseConnect  Phase = "connect"
	PhaseHelo     Phase = "helo"
	PhaseEhlo     Phase = "ehlo"
	PhaseStartTLS Phase = "starttls"
	PhaseAuth     Phase = "auth"
	PhaseMailFrom Phase = "mail-from"
	PhaseRcptTo   Phase = "rcpt-to"
	PhaseData     Phase = "data"
	PhaseDataLine Phase = "data-line"
	PhaseRset     Phase = "rset"
	PhaseQuit     Phase = "quit"
	PhaseNoop     Phase = "noop"
	PhaseHelp     Phase = "help"
	PhaseWiz      Phase = "wiz"
	PhaseCommit   Phase = "commit"
)

// Event is a report event of smtpd, the event field of a report line and
// of a register|report line (smtpd-filters(7); smtp_report.c).
type Event string

// The events smtpd reports. Report.Decode types the ones this package
// knows; any other gives Unhandled.
const (
	EventLinkConnect    Event = "link-connect"
	EventLinkDisconnect Event = "link-disconnect"
	EventLinkGreeting   Event = "link-greeting"
	EventLinkIdentify   Event = "link-identify"
	EventLinkTLS        Event = "link-tls"
	EventLinkAuth       Event = "link-auth"
	EventTxReset        Event = "tx-reset"
	EventTxBegin        Event = "tx-begin"
	EventTxMail         Event = "tx-mail"
	EventTxRcpt         Event = "tx-rcpt"
	EventTxEnvelope     Event = "tx-envelope"
	EventTxData         Event = "tx-data"
	EventTxCommit       Event = "tx-commit"
	EventTxRollback     Event = "tx-rollback"
	EventProtocolClient Event = "protocol-client"
	EventProtocolServer Event = "protocol-server"
	EventFilterReport   Event = "filter-report"
	EventFilterResponse Event = "filter-response"
	EventTimeout        Event = "timeout"
)
