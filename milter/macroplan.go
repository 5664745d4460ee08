package milter

import (
	"maps"
	"slices"
	"strings"
	"unicode"
)

// This file is for `filter-milter check`: what one milter will be sent
// at each stage, worked out the way a session sends it (macrolists.go),
// with where each value comes from, so that the postmaster sees exactly
// the macros that go on the wire and, apart, the ones that never do.

// sessionMacro is a macro the gateway sets from smtpd's reports (or
// from -hostname and -daemon-name): the first stage it is known at, and
// when it has a value only in some sessions.
type sessionMacro struct {
	from macroStage
	when string // "": in every session
}

// sessionMacros are the macros smtpd can supply: the gateway sets these
// and no others (gateway's link-connect, link-greeting, link-tls,
// link-auth, tx-begin reports and MAIL and RCPT requests).
var sessionMacros = map[string]sessionMacro{
	MacroMTAName:    {stageConnect, ""},
	MacroDaemonName: {stageConnect, ""},
	MacroDaemonAddr: {stageConnect, "TCP"},
	MacroDaemonPort: {stageConnect, "TCP"},
	MacroIfAddr:     {stageConnect, "TCP"},
	MacroMTAVersion: {stageConnect, ""},
	MacroClientInfo: {stageConnect, ""},
	MacroClientName: {stageConnect, ""},
	MacroClientAddr: {stageConnect, "TCP"},
	MacroClientPort: {stageConnect, "TCP"},
	MacroClientPTR:  {stageConnect, "reverse DNS"},
	MacroTLSVersion: {stageHelo, "TLS"},
	MacroCipher:     {stageHelo, "TLS"},
	MacroCipherBits: {stageHelo, "TLS"},
	MacroQueueID:    {stageRcpt, ""}, // tx-begin comes after the MAIL filter request
	MacroAuthType:   {stageMail, "AUTH"},
	MacroAuthAuthen: {stageMail, "AUTH"},
	MacroMailAddr:   {stageMail, ""},
	MacroMailHost:   {stageMail, ""},
	MacroRcptAddr:   {stageRcpt, ""},
	MacroRcptHost:   {stageRcpt, ""},
}

// MacroSource is where the value of a macro sent at a stage comes from.
type MacroSource int

const (
	// FromSMTPD: the session's value, from smtpd's reports (or -hostname,
	// -daemon-name). When is set, only some sessions have one; the
	// others get Default if there is one, else nothing.
	FromSMTPD MacroSource = iota
	// FromMacroV: macro_v, in every session.
	FromMacroV
	// FromDefaults: macro_defaults only; smtpd cannot supply it (at this
	// stage).
	FromDefaults
	// NeverSent: no value at this stage, ever: not on the wire.
	NeverSent
)

// PlannedMacro is one macro of a stage's list.
type PlannedMacro struct {
	Name   string
	Source MacroSource
	When   string // FromSMTPD: the sessions that have a value ("TLS", "AUTH", ...); "": all
	Value  string // FromMacroV, FromDefaults, and FromSMTPD with When: the configured value
}

// StagePlan is what one stage sends one milter.
type StagePlan struct {
	Stage  string // connect, helo, mail, rcpt, data, eoh, eom
	Asked  bool   // the list is the milter's own, from its negotiation answer
	Macros []PlannedMacro
	// NoStage is why nothing of the list is sent at all ("" when it is).
	NoStage string
}

// MacroPlan is what each stage will send this milter, in session order:
// the list (the milter's own where it asked for one, else the
// configured one) and, for each name, where its value comes from.
func (n *Negotiation) MacroPlan() []StagePlan {
	cfg := n.macros.resolved()
	lists := cfg.Lists.byStage()
	asked := [numMacroStages]bool{}
	for _, r := range n.Requested {
		for s := range numMacroStages {
			if s.String() == r.Stage {
				lists[s], asked[s] = r.Macros, true // a later list for a stage wins, as in go-milter
			}
		}
	}
	var out []StagePlan
	for _, s := range stagesInOrder {
		p := StagePlan{Stage: s.String(), Asked: asked[s]}
		if s == stageData && n.Reply.Version <= 3 {
			// go-milter sends DATA's macros only from version 4 on,
			// which added DATA.
			p.NoStage = "protocol version 3 or older has no DATA stage"
		}
		for _, name := range lists[s] {
			p.Macros = append(p.Macros, cfg.plan(name, s))
		}
		out = append(out, p)
	}
	return out
}

// plan is where name's value at stage comes from (milterMacros.GetEx).
func (c *MacroConfig) plan(name string, stage macroStage) PlannedMacro {
	canon, err := CanonicalMacroName(name)
	if err != nil {
		canon = name
	}
	p := PlannedMacro{Name: name}
	def, hasDef := c.Defaults[canon]
	sm, known := sessionMacros[canon]
	switch {
	case canon == MacroMTAVersion && c.V != "":
		p.Source, p.Value = FromMacroV, c.V
	case known && stageOrder[sm.from] <= stageOrder[stage]:
		p.Source, p.When = FromSMTPD, sm.when
		if sm.when != "" && hasDef {
			p.Value = def
		}
	case hasDef:
		p.Source, p.Value = FromDefaults, def
	default:
		p.Source = NeverSent
	}
	return p
}

// UnusedMacroDefaults are the macro_defaults no stage's list names: they
// are never sent.
func (n *Negotiation) UnusedMacroDefaults() []string {
	used := map[string]bool{}
	for _, p := range n.MacroPlan() {
		if p.NoStage != "" {
			continue
		}
		for _, m := range p.Macros {
			if c, err := CanonicalMacroName(m.Name); err == nil {
				used[c] = true
			}
		}
	}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(n.macros.resolved().Defaults)) {
		if !used[k] {
			out = append(out, k)
		}
	}
	return out
}

// splitAsked splits a list from a negotiation answer as go-milter does
// (parseRequestedMacros and removeDuplicates): on white space and
// commas, without empty names and duplicates.
func splitAsked(names string) []string {
	out := []string{}
	for _, f := range strings.FieldsFunc(names, func(r rune) bool { return unicode.IsSpace(r) || r == ',' }) {
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}
