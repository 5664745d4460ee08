package smtpdplay

import (
	"fmt"
	"sync"
)

// streamBufs are PlayMessage's write buffers, one per message in flight.
var streamBufs = sync.Pool{New: func() any { b := make([]byte, 0, maxWrite+(8<<10)); return &b }}

// PlayMessage is Steps.Message and Play in one, for messages too large to
// keep encoded per goroutine: it writes one data-line request per line and
// the final "." under a fresh token, in writes of about 64 KB built in a
// pooled buffer, and waits for the lines to come back unchanged up to ".".
// A Step holds the whole message encoded (about twice its size), once per
// goroutine that plays it; the load generator's memory runs have a
// thousand 10 MB messages in flight at once.
//
// written, if not nil, is called after each write with the bytes of data
// lines it carried: the last call follows the write of ".". For a filter
// that did not register data-line, PlayMessage writes nothing and returns
// nil, as smtpd sends it no data lines.
func (s *Session) PlayMessage(lines [][]byte, written func(dataBytes int)) error {
	if !s.p.reg.Filter("data-line") {
		return nil
	}
	tok := s.newToken(playedData)
	ts := timestamp()
	bp := streamBufs.Get().(*[]byte)
	defer func() { *bp = (*bp)[:0]; streamBufs.Put(bp) }()
	b, n := (*bp)[:0], 0
	sent := echoCount{hash: fnvOffset}
	for _, l := range lines {
		b = appendRequest(s.p, b, ts, "data-line", s.id, tok, l)
		n += len(l)
		sent.lines++
		sent.bytes += len(l)
		if s.p.cfg.HashDataLines {
			sent.hash = fnvAdd(sent.hash, l)
		}
		if len(b) < maxWrite {
			continue
		}
		if err := s.p.write(b); err != nil {
			return err
		}
		if written != nil {
			written(n)
		}
		b, n = b[:0], 0
	}
	b = appendRequest(s.p, b, ts, "data-line", s.id, tok, ".")
	err := s.p.write(b)
	*bp = b
	if err != nil {
		return err
	}
	if written != nil {
		written(n)
	}
	r, err := s.next()
	if err != nil {
		return fmt.Errorf("data-line: %w", err)
	}
	switch {
	case r.Token != tok || r.kind != playedData:
		return fmt.Errorf("session %s: data-line: the filter wrote %s, not the data lines of token %s", s.id, r.describe(), tok)
	case !s.p.sameEcho(r.echo, sent):
		return fmt.Errorf("session %s: %d data lines of %d bytes came back (FNV-1a %x), want the %d of %d bytes sent (%x): the filter changed the message",
			s.id, r.echo.lines, r.echo.bytes, r.echo.hash, sent.lines, sent.bytes, sent.hash)
	}
	return nil
}
