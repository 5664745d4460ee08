// Command floorfilter is the floor for filter-milter's benchmarks: the
// least an OpenSMTPD proc-exec filter can do for the phases filter-milter
// registers. It registers the filter phases connect, helo, ehlo,
// mail-from, rcpt-to, data, data-line and commit (no reports), answers
// every request with proceed and writes every data line back unchanged
// (still dot-stuffed). It buffers nothing: one goroutine, a bufio.Reader
// on stdin, a bufio.Writer on stdout flushed whenever stdin has nothing
// more buffered: the least work any filter on OpenSMTPD can do, and so
// the lower bound the benchmarks measure filter-milter against.
//
// With -reports it also registers every report event filter-milter
// registers, and reads and drops them: smtpd then writes the report stream
// a milter bridge needs (the connection's addresses, greeting, TLS, AUTH,
// transaction begin and end, the client's commands), and the floor's CPU
// includes smtpd's cost of writing it. That is the least a milter bridge on smtpd can cost before
// it talks to any milter (bench.sh's setup Br, "the limit of a milter
// bridge").
//
//	filter "floor" proc-exec "/path/to/floorfilter"
//	filter "floor" proc-exec "/path/to/floorfilter -reports"
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
)

var phases = []string{"connect", "helo", "ehlo", "mail-from", "rcpt-to", "data", "data-line", "commit"}

// reportEvents is what gateway/table.go's eventTable registers; the test
// fails when the two differ.
var reportEvents = []string{"link-connect", "link-greeting", "link-tls", "link-auth", "link-disconnect",
	"tx-begin", "tx-reset", "tx-rollback", "protocol-client"}

func main() {
	reports := flag.Bool("reports", false, "also register the report events filter-milter registers (and drop them)")
	flag.Parse()
	if err := run(os.Stdin, os.Stdout, *reports); err != nil {
		fmt.Fprintln(os.Stderr, "floorfilter:", err)
		os.Exit(1)
	}
}

func run(stdin io.Reader, stdout io.Writer, reports bool) error {
	in := bufio.NewReaderSize(stdin, 64<<10)
	out := bufio.NewWriterSize(stdout, 64<<10)
	// The handshake: config lines until config|ready.
	for {
		line, err := in.ReadSlice('\n')
		if err != nil {
			return fmt.Errorf("handshake: %w", err)
		}
		if string(line) == "config|ready\n" {
			break
		}
	}
	if reports {
		for _, e := range reportEvents {
			fmt.Fprintf(out, "register|report|smtp-in|%s\n", e)
		}
	}
	for _, p := range phases {
		fmt.Fprintf(out, "register|filter|smtp-in|%s\n", p)
	}
	out.WriteString("register|ready\n")
	if err := out.Flush(); err != nil {
		return err
	}
	var long []byte // a line longer than the reader's buffer
	for {
		line, err := in.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			long = append(long, line...)
			continue
		}
		if err != nil {
			if err == io.EOF {
				return out.Flush()
			}
			return err
		}
		if long != nil {
			line = append(long, line...)
			long = nil
		}
		answer(out, line[:len(line)-1])
		if in.Buffered() == 0 {
			if err := out.Flush(); err != nil {
				return err
			}
		}
	}
}

// answer answers one line: filter|version|time|subsystem|phase|session|token|param.
func answer(out *bufio.Writer, line []byte) {
	if !bytes.HasPrefix(line, []byte("filter|")) {
		return // report and config lines need no answer
	}
	var f [7][]byte
	rest := line
	for i := range f {
		j := bytes.IndexByte(rest, '|')
		if j < 0 {
			if i < len(f)-1 {
				return
			}
			f[i], rest = rest, nil
			break
		}
		f[i], rest = rest[:j], rest[j+1:]
	}
	version, phase, session, token := f[1], f[4], f[5], f[6]
	// Protocol 0.4 (smtpd 6.6) answers token first; 0.5 and later session first.
	first, second := session, token
	if string(version) == "0.4" {
		first, second = token, session
	}
	if string(phase) == "data-line" {
		out.WriteString("filter-dataline|")
		out.Write(first)
		out.WriteByte('|')
		out.Write(second)
		out.WriteByte('|')
		out.Write(rest)
		out.WriteByte('\n')
		return
	}
	out.WriteString("filter-result|")
	out.Write(first)
	out.WriteByte('|')
	out.Write(second)
	out.WriteString("|proceed\n")
}
