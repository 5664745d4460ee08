package milter

import (
	"bytes"
	"encoding/binary"
	"fmt"

	djmilter "github.com/d--j/go-milter"
)

// This file is the one reader of the milter's answer to SMFIC_OPTNEG
// (libmilter's engine.c st_optionneg writes it): version, actions,
// protocol flags and the macro lists per stage. conn uses it to complete
// the lists before go-milter sees the answer (completeSymlists), and
// Client.Negotiate to tell the postmaster what a milter asked for.

// Actions a milter may negotiate (SMFIF_*, libmilter's mfdef.h).
const (
	actAddHeaders   uint32 = 0x001 // SMFIF_ADDHDRS
	actChangeBody   uint32 = 0x002 // SMFIF_CHGBODY
	actAddRcpt      uint32 = 0x004 // SMFIF_ADDRCPT
	actDelRcpt      uint32 = 0x008 // SMFIF_DELRCPT
	actChangeHeader uint32 = 0x010 // SMFIF_CHGHDRS
	actQuarantine   uint32 = 0x020 // SMFIF_QUARANTINE
	actChangeFrom   uint32 = 0x040 // SMFIF_CHGFROM (version 6)
	actAddRcptPar   uint32 = 0x080 // SMFIF_ADDRCPT_PAR (version 6)
	actSetSymlist   uint32 = 0x100 // SMFIF_SETSYMLIST (version 6)

	// actionsV2 is what versions 2 to 5 know (mfdef.h SMFI_V2_ACTS).
	actionsV2 = actAddHeaders | actChangeBody | actAddRcpt | actDelRcpt | actChangeHeader | actQuarantine
	// actionsV6 is every action of version 6 (SMFI_V6_ACTS), all offered.
	actionsV6 = actionsV2 | actChangeFrom | actAddRcptPar | actSetSymlist
)

// Protocol flags (SMFIP_*, libmilter's mfdef.h).
const (
	protoNoConnect      uint32 = 0x000001   // SMFIP_NOCONNECT
	protoNoHelo         uint32 = 0x000002   // SMFIP_NOHELO
	protoNoMail         uint32 = 0x000004   // SMFIP_NOMAIL
	protoNoRcpt         uint32 = 0x000008   // SMFIP_NORCPT
	protoNoBody         uint32 = 0x000010   // SMFIP_NOBODY
	protoNoHeaders      uint32 = 0x000020   // SMFIP_NOHDRS
	protoNoEOH          uint32 = 0x000040   // SMFIP_NOEOH
	protoNoHeaderReply  uint32 = 0x000080   // SMFIP_NR_HDR (also SMFIP_NOHREPL)
	protoNoUnknown      uint32 = 0x000100   // SMFIP_NOUNKNOWN (version 3)
	protoNoData         uint32 = 0x000200   // SMFIP_NODATA (version 4)
	protoSkip           uint32 = 0x000400   // SMFIP_SKIP
	protoRcptRej        uint32 = 0x000800   // SMFIP_RCPT_REJ
	protoNoConnectReply uint32 = 0x001000   // SMFIP_NR_CONN
	protoNoHeloReply    uint32 = 0x002000   // SMFIP_NR_HELO
	protoNoMailReply    uint32 = 0x004000   // SMFIP_NR_MAIL
	protoNoRcptReply    uint32 = 0x008000   // SMFIP_NR_RCPT
	protoNoDataReply    uint32 = 0x010000   // SMFIP_NR_DATA
	protoNoUnknownReply uint32 = 0x020000   // SMFIP_NR_UNKN
	protoNoEOHReply     uint32 = 0x040000   // SMFIP_NR_EOH
	protoNoBodyReply    uint32 = 0x080000   // SMFIP_NR_BODY
	protoHeaderLeadSpc  uint32 = 0x100000   // SMFIP_HDR_LEADSPC
	protoMaxData256K    uint32 = 0x10000000 // SMFIP_MDS_256K
	protoMaxData1M      uint32 = 0x20000000 // SMFIP_MDS_1M

	// protoV6 is every flag of version 6 (SMFI_CURR_PROT), all offered.
	protoV6 uint32 = 0x1FFFFF
	// protoInternal are the SMFIP_MDS_* bits and bit 30, which only
	// libmilter and the MTA exchange; go-milter masks them before it
	// checks the answer.
	protoInternal uint32 = 0x70000000
	// protoSkipStages are the SMFIP_NO* flags: stages not sent at all.
	protoSkipStages = protoNoConnect | protoNoHelo | protoNoMail | protoNoRcpt | protoNoBody | protoNoHeaders |
		protoNoEOH | protoNoUnknown | protoNoData
	// protoNoReplyStages are the SMFIP_NR_* flags: stages not answered.
	protoNoReplyStages = protoNoHeaderReply | protoNoConnectReply | protoNoHeloReply | protoNoMailReply |
		protoNoRcptReply | protoNoDataReply | protoNoUnknownReply | protoNoEOHReply | protoNoBodyReply
)

// Masks are the three numbers of one side of the negotiation.
type Masks struct {
	Version  uint32
	Actions  uint32 // SMFIF_*
	Protocol uint32 // SMFIP_*
}

// offer is what the gateway offers a milter of at most the given protocol
// version (0: 6): version 6 and every action and protocol flag, as
// Postfix and Sendmail do. Milters built on libmilter abort negotiation
// when an action they require is missing (clamav-milter and opendmarc
// need QUARANTINE), and rspamd claims six actions and all no-reply flags
// whatever it is offered; what the filter protocol cannot carry is
// decided by the gateway's policy instead. Older versions are offered
// what they know (mfdef.h SMFI_V2_ACTS, SMFI_V2_PROT, NOUNKNOWN from 3,
// NODATA from 4).
func offer(version uint32) Masks {
	if version == 0 {
		version = djmilter.MaxClientProtocolVersion
	}
	if version >= 6 {
		return Masks{Version: version, Actions: actionsV6, Protocol: protoV6}
	}
	m := Masks{Version: version, Actions: actionsV2,
		Protocol: protoNoConnect | protoNoHelo | protoNoMail | protoNoRcpt | protoNoBody | protoNoHeaders | protoNoEOH}
	if version >= 3 {
		m.Protocol |= protoNoUnknown
	}
	if version >= 4 {
		m.Protocol |= protoNoData
	}
	return m
}

// macroStage is a stage a macro list is for (SMFIM_*, mfdef.h).
type macroStage uint32

const (
	stageConnect macroStage = iota // SMFIM_CONNECT
	stageHelo                      // SMFIM_HELO
	stageMail                      // SMFIM_ENVFROM
	stageRcpt                      // SMFIM_ENVRCPT
	stageData                      // SMFIM_DATA
	stageEOM                       // SMFIM_EOM
	stageEOH                       // SMFIM_EOH
	numMacroStages
)

var macroStageNames = [numMacroStages]string{"connect", "helo", "mail", "rcpt", "data", "eom", "eoh"}

func (s macroStage) String() string {
	if s < numMacroStages {
		return macroStageNames[s]
	}
	return fmt.Sprintf("stage%d", uint32(s))
}

// stageOrder is the order stages come in a session (the SMFIM_*
// numbers put end of message before end of headers).
var stageOrder = [numMacroStages]int{stageConnect: 0, stageHelo: 1, stageMail: 2, stageRcpt: 3, stageData: 4, stageEOH: 5, stageEOM: 6}

// stagesInOrder are the stages in the order they come.
var stagesInOrder = [numMacroStages]macroStage{stageConnect, stageHelo, stageMail, stageRcpt, stageData, stageEOH, stageEOM}

// macroList is one macro list of the negotiation answer.
type macroList struct {
	stage macroStage // possibly one mfdef.h does not name
	names string     // as the milter wrote it: names separated by spaces
}

// optnegAnswer is the milter's answer to SMFIC_OPTNEG, decoded.
type optnegAnswer struct {
	Masks
	lists []macroList // in the order sent
	// malformed is set when a list is not NUL-terminated; it and
	// anything after it were not read (go-milter stops there too).
	malformed []byte
}

// parseOptneg decodes the payload of an SMFIR_OPTNEG packet (after the
// code): three 32-bit numbers, then, in an answer longer than 16 bytes (go-milter's
// rule), lists of a 32-bit stage and a NUL-terminated string of names,
// for as long as more than 4 bytes remain.
func parseOptneg(data []byte) (optnegAnswer, error) {
	var a optnegAnswer
	if len(data) < 12 {
		return a, fmt.Errorf("%w: negotiation answer of %d bytes, want at least 12", ErrProtocol, len(data))
	}
	a.Masks = Masks{
		Version:  binary.BigEndian.Uint32(data),
		Actions:  binary.BigEndian.Uint32(data[4:]),
		Protocol: binary.BigEndian.Uint32(data[8:]),
	}
	if len(data) <= 16 {
		return a, nil
	}
	for rest := data[12:]; len(rest) > 4; {
		stage := macroStage(binary.BigEndian.Uint32(rest))
		end := bytes.IndexByte(rest[4:], 0)
		if end < 0 {
			a.malformed = rest
			break
		}
		a.lists = append(a.lists, macroList{stage: stage, names: string(rest[4 : 4+end])})
		rest = rest[4+end+1:]
	}
	return a, nil
}

// perStage is the list the gateway sends at each stage: the milter's own
// for the stages it named (the last one when it named a stage twice, as
// go-milter keeps), the configured one (nil: DefaultMacroLists) for the
// others; Postfix and Sendmail replace only the stages a milter asks for.
func (a optnegAnswer) perStage(configured *[numMacroStages]string) (lists [numMacroStages]string) {
	if configured == nil {
		lists = DefaultMacroLists.wire()
	} else {
		lists = *configured
	}
	for _, l := range a.lists {
		if l.stage < numMacroStages {
			lists[l.stage] = l.names
		}
	}
	return lists
}

// problems lists what in the answer's macro lists the gateway ignores,
// for the log: a list for a stage mfdef.h does not name, a second list
// for one stage, a list that is not NUL-terminated (quoted: the milter's
// bytes).
func (a optnegAnswer) problems() []string {
	var out []string
	var seen [numMacroStages]bool
	for _, l := range a.lists {
		switch {
		case l.stage >= numMacroStages:
			out = append(out, fmt.Sprintf("a macro list for unknown stage %d, ignored: %s", uint32(l.stage), quoteSome([]byte(l.names))))
		case seen[l.stage]:
			out = append(out, fmt.Sprintf("a second macro list for stage %s; the last one is used: %s", l.stage, quoteSome([]byte(l.names))))
		default:
			seen[l.stage] = true
		}
	}
	if a.malformed != nil {
		out = append(out, fmt.Sprintf("a macro list that is not NUL-terminated, ignored with the rest of the answer: %s", quoteSome(a.malformed)))
	}
	return out
}

// encode writes the answer back as an SMFIR_OPTNEG packet (length and
// code included) with the given lists, one per stage, in stage order
// (an empty one too: the milter asked for no macros there).
func (a optnegAnswer) encode(lists [numMacroStages]string) []byte {
	pkt := make([]byte, 4, 64)
	pkt = append(pkt, replyOptneg)
	pkt = binary.BigEndian.AppendUint32(pkt, a.Version)
	pkt = binary.BigEndian.AppendUint32(pkt, a.Actions)
	pkt = binary.BigEndian.AppendUint32(pkt, a.Protocol)
	for s, names := range lists {
		pkt = binary.BigEndian.AppendUint32(pkt, uint32(s))
		pkt = append(append(pkt, names...), 0)
	}
	binary.BigEndian.PutUint32(pkt, uint32(len(pkt)-4))
	return pkt
}

// replyOptneg is SMFIC_OPTNEG, which is also the code of its answer.
const replyOptneg = 'O'
