package smtpdplay

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strings"
	"testing"
)

// fastEcho is a filter that costs little per line, so that
// BenchmarkPlayMessage measures the player: it answers proceed and hands
// every data line back, cutting fields by hand.
func fastEcho(in io.Reader, out io.WriteCloser) {
	defer out.Close()
	rd := bufio.NewReaderSize(in, 64<<10)
	w := bufio.NewWriterSize(out, 64<<10)
	for {
		l, err := rd.ReadSlice('\n')
		if err != nil {
			return
		}
		switch {
		case string(l) == "config|ready\n":
			for _, p := range testPhases {
				w.WriteString("register|filter|smtp-in|" + p + "\n")
			}
			w.WriteString("register|report|smtp-in|*\nregister|ready\n")
		case bytes.HasPrefix(l, []byte("filter|")):
			// filter|version|time|subsystem|phase|session|token|param
			f := l
			for range 4 {
				f = f[bytes.IndexByte(f, '|')+1:]
			}
			phase, rest, _ := bytes.Cut(f, []byte("|"))
			ids, param := rest[:33], rest[34:]
			if string(phase) == "data-line" {
				w.WriteString("filter-dataline|")
				w.Write(ids)
				w.WriteByte('|')
				w.Write(param)
			} else {
				w.WriteString("filter-result|")
				w.Write(ids)
				w.WriteString("|proceed\n")
			}
		}
		if rd.Buffered() == 0 {
			if w.Flush() != nil {
				return
			}
		}
	}
}

// BenchmarkPlayMessage plays whole sessions of one message of 76-character
// lines against fastEcho: the player's cost per message and per line
// (writing the steps, reading and counting the lines that come back).
//
//	go test -run '^$' -bench PlayMessage ./smtpdplay
func BenchmarkPlayMessage(b *testing.B) {
	for _, hash := range []bool{false, true} {
		b.Run(fmt.Sprintf("size=100KB/hash=%v", hash), func(b *testing.B) {
			inR, inW := io.Pipe()
			outR, outW := io.Pipe()
			go fastEcho(inR, outW)
			p, err := Start(inW, outR, Config{HashDataLines: hash})
			if err != nil {
				b.Fatal(err)
			}
			var body [][]byte
			line := strings.Repeat("x", 76)
			for range 100 << 10 / 78 {
				body = append(body, []byte(line))
			}
			steps := playScript(p, body)
			s := p.NewSession()
			b.ReportAllocs()
			for b.Loop() {
				for _, st := range steps {
					if err := s.Play(st); err != nil {
						b.Fatal(err)
					}
				}
				if err := s.Renew(); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(body)), "ns/line")
			if err := p.Close(); err != nil {
				b.Fatal(err)
			}
		})
	}
}
