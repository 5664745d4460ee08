// Package benchmsg is the message that filter-milter's benchmarks send:
// the gateway's Go benchmarks and the load generator (integration/bench/loadgen)
// use the same one, so that their figures compare.
package benchmsg

import "strconv"

// Lines is a message of about size bytes (as queued, with CRLF line ends)
// as smtpd hands it to a filter: smtpd's Received header, a plain header,
// and body lines of 76 characters, still dot-stuffed (every 40th body line
// starts with a stuffed dot). queued is its size as queued.
func Lines(size int) (lines [][]byte, queued int) {
	text := []string{
		"Received: from client.bench.example (localhost [127.0.0.1])",
		"\tby mx.bench.example (OpenSMTPD) with ESMTP id 2a4946c4;",
		"\tTue, 24 Nov 2026 07:22:03 +0000 (UTC)",
		"From: Sender <sender@bench.example>",
		"To: Recipient <rcpt@bench.example>",
		"Subject: benchmark message",
		"Date: Tue, 24 Nov 2026 07:22:03 +0000",
		"Message-ID: <20261124072203.2a4946c4@client.bench.example>",
		"MIME-Version: 1.0",
		"Content-Type: text/plain; charset=us-ascii",
		"",
	}
	for _, l := range text {
		queued += len(l) + 2
	}
	const filler = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore "
	for i := 0; queued < size; i++ {
		l := (strconv.Itoa(i) + " " + filler)[:76]
		if i%40 == 39 {
			l = ".." + l[2:]
		}
		text = append(text, l)
		queued += len(l) + 2
	}
	lines = make([][]byte, len(text))
	for i, l := range text {
		lines[i] = []byte(l)
	}
	return lines, queued
}
