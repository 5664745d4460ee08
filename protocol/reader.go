// Package protocol is OpenSMTPD's filter protocol (smtpd-filters(7)):
// lines from smtpd to typed values, and the filter's lines back. It does
// no I/O of its own beyond reading lines, and starts no goroutines.
package protocol

import (
	"bufio"
	"errors"
	"io"
)

// ErrLineTooLong is returned for a line over the reader's limit; the rest
// of that line is discarded and the reader stays usable.
var ErrLineTooLong = errors.New("protocol: line too long")

// Reader reads smtpd's lines. Unlike bufio.Scanner it has no 64 KiB limit
// (a data line can be 65 KB on smtpd, a scanner's failure made
// filter-rspamd exit and take smtpd down), and it splits on '\n' only: a
// '\r' before it is message data and is kept.
type Reader struct {
	br  *bufio.Reader
	max int
	buf []byte
}

// NewReader reads lines of at most maxLine bytes (16 MiB if maxLine <= 0).
func NewReader(r io.Reader, maxLine int) *Reader {
	if maxLine <= 0 {
		maxLine = 16 << 20
	}
	return &Reader{br: bufio.NewReaderSize(r, 64<<10), max: maxLine}
}

// ReadLine returns the next line without its '\n'; the slice is valid until
// the next call. A last line without '\n' is returned, then io.EOF.
func (r *Reader) ReadLine() ([]byte, error) {
	line, err := r.br.ReadSlice('\n')
	if err == nil {
		return line[:len(line)-1], nil
	}
	if err != bufio.ErrBufferFull {
		if len(line) > 0 && err == io.EOF {
			return line, nil
		}
		return nil, err
	}
	// A line longer than the buffer: collect it.
	r.buf = append(r.buf[:0], line...)
	for {
		line, err = r.br.ReadSlice('\n')
		if len(r.buf)+len(line) > r.max+1 {
			if err == nil {
				return nil, ErrLineTooLong
			}
			if err == bufio.ErrBufferFull {
				r.buf = r.buf[:0]
				if derr := r.discardLine(); derr != nil && derr != io.EOF {
					return nil, derr
				}
				return nil, ErrLineTooLong
			}
			return nil, ErrLineTooLong
		}
		r.buf = append(r.buf, line...)
		switch err {
		case nil:
			return r.buf[:len(r.buf)-1], nil
		case bufio.ErrBufferFull:
			continue
		case io.EOF:
			return r.buf, nil
		default:
			return nil, err
		}
	}
}

func (r *Reader) discardLine() error {
	for {
		_, err := r.br.ReadSlice('\n')
		if err != bufio.ErrBufferFull {
			return err
		}
	}
}
