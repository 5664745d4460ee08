package protocol

import (
	"bufio"
	"errors"
	"io"
)

// ErrLineTooLong is returned by Reader.ReadLine for a line over the
// reader's limit. The rest of that line has been discarded and the next
// call reads the line after it.
var ErrLineTooLong = errors.New("protocol: line too long")

const (
	// DefaultMaxLine is the line limit of a Reader made with maxLine <= 0.
	// smtpd refuses client lines of 65535 bytes or more, so its longest
	// data-line request is about 65.6 KB; the limit is far above that and
	// only bounds memory against a runaway writer.
	DefaultMaxLine = 16 << 20

	// readBufSize holds any line smtpd sends in one piece, so that
	// ReadLine returns a slice of the buffer and copies nothing.
	readBufSize = 128 << 10

	// keepBuf is the largest overflow buffer kept between lines: one very
	// long line should not pin megabytes for the life of the process.
	keepBuf = 1 << 20
)

// Reader reads the '\n'-terminated lines smtpd writes to a filter.
//
// It differs from bufio.Scanner in two ways that matter here. There is no
// 64 KiB token limit: a data line can exceed it, and filter-rspamd, which
// used a Scanner, exited on such a line and took smtpd down with it (smtpd
// shuts down when a filter process exits). And lines are split on '\n'
// only: smtpd strips one '\r' from each client line, so a '\r' that is
// still there is message data and must be passed on, where
// bufio.ScanLines would drop it.
type Reader struct {
	br  *bufio.Reader
	max int
	buf []byte // collects a line longer than br's buffer
	src source
}

// source is the underlying reader with the hooks OnRead sets.
type source struct {
	r             io.Reader
	before, after func()
}

func (s *source) Read(p []byte) (int, error) {
	if s.before != nil {
		s.before()
	}
	n, err := s.r.Read(p)
	if s.after != nil {
		s.after()
	}
	return n, err
}

// NewReader returns a Reader of lines of at most maxLine bytes, not
// counting the '\n'. maxLine <= 0 means DefaultMaxLine (16 MiB).
func NewReader(r io.Reader, maxLine int) *Reader {
	if maxLine <= 0 {
		maxLine = DefaultMaxLine
	}
	rd := &Reader{max: maxLine, src: source{r: r}}
	rd.br = bufio.NewReaderSize(&rd.src, readBufSize)
	return rd
}

// OnRead sets functions called around each read of the underlying reader:
// before just before a read, which may block, and after once it returned.
// Either may be nil. ReadLine reads the underlying reader only when the
// lines it already holds are used up, so before is the point at which a
// caller that queues work line by line has seen everything that arrived
// and can hand it on in one go; after is when new lines arrived.
func (r *Reader) OnRead(before, after func()) {
	r.src.before, r.src.after = before, after
}

// ReadLine returns the next line without its '\n'. The slice is valid
// until the next call.
//
// A last line that ends without '\n' is returned as a line, and the call
// after it returns io.EOF. A line over the limit gives ErrLineTooLong
// after the rest of it has been read and dropped, so the reader stays in
// step with smtpd's lines. Other errors come from the underlying reader;
// a partial line read before one is dropped.
func (r *Reader) ReadLine() ([]byte, error) {
	if cap(r.buf) > keepBuf {
		r.buf = nil
	}
	r.buf = r.buf[:0]
	for {
		frag, err := r.br.ReadSlice('\n')
		n := len(r.buf) + len(frag)
		if err == nil {
			n-- // the '\n' is not part of the line
		}
		if n > r.max {
			r.buf = r.buf[:0]
			if err == bufio.ErrBufferFull {
				// An error while skipping the rest is left for the next
				// call to find: this one reports the long line.
				_ = r.skipLine()
			}
			return nil, ErrLineTooLong
		}
		switch err {
		case nil:
			frag = frag[:len(frag)-1]
		case bufio.ErrBufferFull:
			r.buf = append(r.buf, frag...)
			continue
		case io.EOF:
			if n == 0 {
				return nil, io.EOF
			}
		default:
			return nil, err
		}
		if len(r.buf) == 0 {
			return frag, nil // the whole line is in br's buffer
		}
		r.buf = append(r.buf, frag...)
		return r.buf, nil
	}
}

// skipLine reads up to and including the next '\n'.
func (r *Reader) skipLine() error {
	for {
		_, err := r.br.ReadSlice('\n')
		if err != bufio.ErrBufferFull {
			return err
		}
	}
}
