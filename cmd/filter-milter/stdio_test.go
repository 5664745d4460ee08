package main

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// mustNonBlocking makes fds[0] a poller-served file; both ends are closed
// when the test ends.
func mustNonBlocking(t *testing.T, fds [2]int, kind string) *os.File {
	t.Helper()
	t.Cleanup(func() { syscall.Close(fds[1]) })
	f, ok := nonBlocking(fds[0], kind)
	if !ok {
		syscall.Close(fds[0])
		t.Fatalf("nonBlocking refused a %s", kind)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// A pipe (or smtpd's socketpair) becomes a poller-served file: a read on
// it honours a deadline, which a blocking descriptor cannot.
func TestNonBlockingPipeIsPollable(t *testing.T) {
	var p [2]int
	if err := syscall.Pipe(p[:]); err != nil {
		t.Fatal(err)
	}
	f := mustNonBlocking(t, p, "pipe")
	if err := f.SetReadDeadline(time.Now().Add(20 * time.Millisecond)); err != nil {
		t.Fatalf("SetReadDeadline on the pipe: %v (not on the poller)", err)
	}
	_, err := f.Read(make([]byte, 16))
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read of an empty pipe: %v, want a deadline error", err)
	}
	if _, err := syscall.Write(p[1], []byte("config|ready\n")); err != nil {
		t.Fatal(err)
	}
	_ = f.SetReadDeadline(time.Time{})
	b := make([]byte, 64)
	n, err := f.Read(b)
	if err != nil || string(b[:n]) != "config|ready\n" {
		t.Fatalf("read %q, %v", b[:n], err)
	}
}

func TestNonBlockingSocketpair(t *testing.T) {
	sp, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	f := mustNonBlocking(t, sp, "socket")
	if _, err := f.Write([]byte("register|ready\n")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 64)
	n, _ := syscall.Read(sp[1], b)
	if string(b[:n]) != "register|ready\n" {
		t.Fatalf("peer read %q", b[:n])
	}
}

// A regular file (or a terminal) is left alone.
func TestNonBlockingLeavesFilesAlone(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, ok := nonBlocking(int(f.Fd()), "file"); ok {
		t.Fatal("nonBlocking took a regular file")
	}
	flags, err := fcntlFlags(int(f.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	if flags&syscall.O_NONBLOCK != 0 {
		t.Fatal("the file was made non-blocking")
	}
}

func fcntlFlags(fd int) (int, error) {
	r, _, e := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_GETFL, 0)
	if e != 0 {
		return 0, e
	}
	return int(r), nil
}
