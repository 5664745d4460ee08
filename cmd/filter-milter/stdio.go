package main

import (
	"os"
	"syscall"
)

// pollableStdio returns stdin and stdout for the filter protocol, switched
// to non-blocking mode when they are a socket or a pipe, as smtpd's
// proc-exec gives them (one socketpair on both).
//
// A blocking read of stdin holds an OS thread in the kernel, and the Go
// runtime hands that thread's processor to another one every time it
// blocks; under load that hand-off, with the context switches it brings,
// cost more CPU than filter-milter's own work on each data line. A
// non-blocking descriptor is served by the runtime's poller instead, like
// the milter sockets, and a read waiting on it can be interrupted by
// closing it.
//
// A terminal or a file is left as it is: O_NONBLOCK is a property of the
// open file, shared with every process that has it open (a shell would
// find its terminal non-blocking afterwards), and regular files do not
// block anyway.
func pollableStdio() (stdin, stdout *os.File) {
	stdin, stdout = os.Stdin, os.Stdout
	if f, ok := nonBlocking(0, "stdin"); ok {
		stdin = f
	}
	if f, ok := nonBlocking(1, "stdout"); ok {
		stdout = f
	}
	return stdin, stdout
}

// nonBlocking sets O_NONBLOCK on fd when it is a socket or a pipe and
// returns a new *os.File for it, which os.NewFile then puts on the poller
// because the descriptor is non-blocking.
func nonBlocking(fd int, name string) (*os.File, bool) {
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return nil, false
	}
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFSOCK, syscall.S_IFIFO:
	default:
		return nil, false
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		return nil, false
	}
	return os.NewFile(uintptr(fd), name), true
}
