// Package protocol is OpenSMTPD's filter protocol (smtpd-filters(7)) as a
// proc-exec filter sees it: the lines smtpd writes to the filter's stdin
// turned into typed values, and the lines the filter writes back.
//
// The protocol is line based. One pipe carries the lines of every SMTP
// session, each line ends in '\n' and its fields are separated by '|'.
// Only the last field of a line may contain '|'. smtpd sends
//
//	config|key|value                                              the handshake, ending in config|ready
//	report|version|time|subsystem|event|session[|fields]           what happened; no answer
//	filter|version|time|subsystem|phase|session|token|parameter    a question; exactly one answer
//
// and the filter answers with register lines (once, after config|ready),
// filter-result lines and, during the data-line phase, filter-dataline
// lines. Field order in some of these changed between protocol versions;
// package compat says which.
//
// smtpd treats almost any malformed line from a filter as fatal and shuts
// down, mail service included; the encoders here refuse what smtpd would
// die on rather than write it.
//
// The package does no I/O beyond reading lines and starts no goroutines.
// Every data line of every message passes through Parse and
// AppendDataLine, so both avoid allocations they do not need.
package protocol
