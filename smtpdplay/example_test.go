package smtpdplay

import (
	"fmt"
	"io"
)

// Example plays one SMTP session line by line, as a test does, against a
// filter on in-memory pipes (here the tests' echo filter; the gateway's
// tests run gateway.Run there).
func Example() {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	go echoFilter{}.run(inR, outW)
	p, err := Start(inW, outR, Config{})
	if err != nil {
		panic(err)
	}
	s := p.NewSession()
	_ = s.Report("link-connect", "localhost", "pass", "127.0.0.1:47092", "127.0.0.1:25")
	d, _, err := s.Ask("connect", "localhost|127.0.0.1")
	fmt.Println("connect:", d, err)

	tok := s.StartData()
	_ = s.SendData(tok, "Subject: hello", "", "..a stuffed dot", ".")
	// These lines, then nothing before them.
	err = s.Expect(s.WantData(tok, "Subject: hello"), s.WantData(tok, ""))
	fmt.Println("expect:", err)
	rest, err := s.ReadMessage(tok)
	fmt.Println("rest:", rest, err)

	// Close ends the filter's input, reads its output to the end and
	// reports any line that was bad or never read.
	fmt.Println("close:", p.Close())
	// Output:
	// connect: proceed <nil>
	// expect: <nil>
	// rest: [..a stuffed dot] <nil>
	// close: <nil>
}

// Example_steps plays sessions a step at a time, as a benchmark or the
// load generator does: each step encoded once, played with a fresh
// session id and token, the message's lines counted as they come back.
func Example_steps() {
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	go echoFilter{}.run(inR, outW)
	p, err := Start(inW, outR, Config{})
	if err != nil {
		panic(err)
	}
	sb := p.NewSteps()
	sb.Report("link-connect", "localhost", "pass", "127.0.0.1:47092", "127.0.0.1:25")
	steps := []*Step{sb.Request("connect", "localhost|127.0.0.1"), sb.Request("data", "")}
	steps = append(steps, sb.Message([][]byte{[]byte("Subject: x"), []byte(""), []byte("body")}), sb.Request("commit", ""))
	sb.Report("link-disconnect")
	steps = append(steps, sb.Flush())

	s := p.NewSession()
	for range 3 {
		for _, st := range steps {
			if err := s.Play(st); err != nil {
				panic(err)
			}
		}
		_ = s.Renew() // the next session, with a fresh id
	}
	fmt.Println("close:", p.Close())
	// Output:
	// close: <nil>
}
