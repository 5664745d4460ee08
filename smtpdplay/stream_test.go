package smtpdplay

import (
	"fmt"
	"strings"
	"testing"

	"github.com/filter-milter/filter-milter/protocol"
)

func TestPlayMessageWritesInPiecesAndChecksTheEcho(t *testing.T) {
	p := start(t, echoFilter{}, Config{})
	var body [][]byte
	for i := range 3000 { // several writes of maxWrite
		body = append(body, fmt.Appendf(nil, "line %d %s", i, strings.Repeat("x", 60)))
	}
	s := p.NewSession()
	for range 2 { // the pooled buffer is reused
		writes, bytes := 0, 0
		must(t, s.PlayMessage(body, func(n int) { writes++; bytes += n }))
		want := 0
		for _, l := range body {
			want += len(l)
		}
		if writes < 3 || bytes != want {
			t.Errorf("%d writes carrying %d bytes of data lines, want at least 3 carrying %d", writes, bytes, want)
		}
	}
	must(t, s.End())
	must(t, p.Close())
}

// A line changed to one of the same length is caught only by the hash.
func TestPlayMessageFindsAChangedMessage(t *testing.T) {
	p := start(t, echoFilter{answer: func(r protocol.Request, normal []string) []string {
		if r.Param == "b" {
			return []string{strings.TrimSuffix(normal[0], "b") + "B"}
		}
		return normal
	}}, Config{HashDataLines: true})
	s := p.NewSession()
	err := s.PlayMessage([][]byte{[]byte("a"), []byte("b")}, nil)
	if err == nil || !strings.Contains(err.Error(), "changed the message") {
		t.Fatalf("PlayMessage = %v, want the changed line found", err)
	}
	must(t, p.Close())
}
