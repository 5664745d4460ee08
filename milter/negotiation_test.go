package milter

import (
	"testing"

	djmilter "github.com/d--j/go-milter"
)

// TestFlagsAreGoMilters: the mfdef.h constants here and go-milter's are
// the same bits (the session asks go-milter, Negotiate and conn ask these).
func TestFlagsAreGoMilters(t *testing.T) {
	for _, c := range []struct {
		ours   uint32
		theirs uint32
	}{
		{actAddHeaders, uint32(djmilter.OptAddHeader)}, {actChangeBody, uint32(djmilter.OptChangeBody)},
		{actAddRcpt, uint32(djmilter.OptAddRcpt)}, {actDelRcpt, uint32(djmilter.OptRemoveRcpt)},
		{actChangeHeader, uint32(djmilter.OptChangeHeader)}, {actQuarantine, uint32(djmilter.OptQuarantine)},
		{actChangeFrom, uint32(djmilter.OptChangeFrom)}, {actAddRcptPar, uint32(djmilter.OptAddRcptWithArgs)},
		{actSetSymlist, uint32(djmilter.OptSetMacros)}, {actionsV6, uint32(djmilter.AllClientSupportedActionMasks)},
		{protoNoConnect, uint32(djmilter.OptNoConnect)}, {protoNoHelo, uint32(djmilter.OptNoHelo)},
		{protoNoMail, uint32(djmilter.OptNoMailFrom)}, {protoNoRcpt, uint32(djmilter.OptNoRcptTo)},
		{protoNoBody, uint32(djmilter.OptNoBody)}, {protoNoHeaders, uint32(djmilter.OptNoHeaders)},
		{protoNoEOH, uint32(djmilter.OptNoEOH)}, {protoNoHeaderReply, uint32(djmilter.OptNoHeaderReply)},
		{protoNoUnknown, uint32(djmilter.OptNoUnknown)}, {protoNoData, uint32(djmilter.OptNoData)},
		{protoSkip, uint32(djmilter.OptSkip)}, {protoRcptRej, uint32(djmilter.OptRcptRej)},
		{protoNoConnectReply, uint32(djmilter.OptNoConnReply)}, {protoNoHeloReply, uint32(djmilter.OptNoHeloReply)},
		{protoNoMailReply, uint32(djmilter.OptNoMailReply)}, {protoNoRcptReply, uint32(djmilter.OptNoRcptReply)},
		{protoNoDataReply, uint32(djmilter.OptNoDataReply)}, {protoNoUnknownReply, uint32(djmilter.OptNoUnknownReply)},
		{protoNoEOHReply, uint32(djmilter.OptNoEOHReply)}, {protoNoBodyReply, uint32(djmilter.OptNoBodyReply)},
		{protoHeaderLeadSpc, uint32(djmilter.OptHeaderLeadingSpace)},
		{protoNoReplyStages, uint32(djmilter.OptNoReplies)},
	} {
		if c.ours != c.theirs {
			t.Errorf("0x%x here is 0x%x in go-milter", c.ours, c.theirs)
		}
	}
}

// TestParseOptneg reads the answer as go-milter does: lists only in an
// answer longer than 16 bytes, for as long as more than 4 bytes remain,
// and nothing after a list that is not NUL-terminated.
func TestParseOptneg(t *testing.T) {
	head := []byte{0, 0, 0, 6, 0, 0, 0, 0x11, 0, 0, 0, 0x80}
	for _, c := range []struct {
		name      string
		tail      string
		lists     []macroList
		malformed string
	}{
		{"no lists", "", nil, ""},
		{"16 bytes: no lists", "\x00\x00\x00\x00", nil, ""},
		{"two lists", "\x00\x00\x00\x00j\x00\x00\x00\x00\x05i {x}\x00", []macroList{{stageConnect, "j"}, {stageEOM, "i {x}"}}, ""},
		{"trailing 4 bytes ignored", "\x00\x00\x00\x06i\x00\x00\x00\x00\x01", []macroList{{stageEOH, "i"}}, ""},
		{"unterminated", "\x00\x00\x00\x01j\x00\x00\x00\x00\x02{x}", []macroList{{stageHelo, "j"}}, "\x00\x00\x00\x02{x}"},
	} {
		t.Run(c.name, func(t *testing.T) {
			a, err := parseOptneg(append(head[:12:12], c.tail...))
			if err != nil {
				t.Fatal(err)
			}
			if a.Masks != (Masks{Version: 6, Actions: 0x11, Protocol: 0x80}) {
				t.Errorf("masks %+v", a.Masks)
			}
			if len(a.lists) != len(c.lists) || string(a.malformed) != c.malformed {
				t.Fatalf("lists %+v, malformed %q; want %+v, %q", a.lists, a.malformed, c.lists, c.malformed)
			}
			for i := range c.lists {
				if a.lists[i] != c.lists[i] {
					t.Errorf("list %d: %+v, want %+v", i, a.lists[i], c.lists[i])
				}
			}
		})
	}
	if _, err := parseOptneg(head[:11]); err == nil {
		t.Error("an 11-byte answer was accepted")
	}
}
