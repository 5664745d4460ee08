package protocol

import (
	"bytes"
	"strings"
	"testing"

	"github.com/filter-milter/filter-milter/compat"
)

// A typical body line of 76 characters, as smtpd sends it.
var benchDataLine = []byte("filter|0.7|1795504662.979590|smtp-in|data-line|61cd21cac6515ff6|e1b36a3bd962f4fa|" + strings.Repeat("x", 76))

func BenchmarkParseDataLine(b *testing.B) {
	b.ReportAllocs()
	b.SetBytes(int64(len(benchDataLine)))
	for b.Loop() {
		if _, err := Parse(benchDataLine); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseReport(b *testing.B) {
	line := []byte("report|0.7|1795504662.977182|smtp-in|tx-mail|61cd21cac6515ff6|498e96ea|ok|sender@example.org")
	b.ReportAllocs()
	for b.Loop() {
		ev, err := Parse(line)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ev.(Report).Decode(); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAppendDataLine(b *testing.B) {
	l := compat.For(compat.Newest)
	line := []byte(strings.Repeat("x", 76))
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	b.SetBytes(int64(len(line)))
	for b.Loop() {
		buf = AppendDataLine(buf[:0], l, "61cd21cac6515ff6", "e1b36a3bd962f4fa", line)
	}
}

// BenchmarkReaderReadLine reads one data line per op from an endless
// stream of them, so allocs/op is what each line costs.
func BenchmarkReaderReadLine(b *testing.B) {
	line := append(benchDataLine[:len(benchDataLine):len(benchDataLine)], '\n')
	r := NewReader(&repeater{data: bytes.Repeat(line, 1000)}, 0)
	b.ReportAllocs()
	b.SetBytes(int64(len(line)))
	for b.Loop() {
		if _, err := r.ReadLine(); err != nil {
			b.Fatal(err)
		}
	}
}

// repeater reads data over and over.
type repeater struct {
	data []byte
	off  int
}

func (r *repeater) Read(p []byte) (int, error) {
	n := copy(p, r.data[r.off:])
	r.off = (r.off + n) % len(r.data)
	return n, nil
}
