package gateway

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
)

// budget is the memory all sessions' message buffers may use together.
type budget struct {
	used atomic.Int64
	max  atomic.Int64 // -memory-budget; Reload may change it
}

func newBudget(max int64) *budget {
	b := &budget{}
	b.max.Store(max)
	return b
}

// lineStore keeps a message's data lines: in memory up to the session's
// limit while the global budget allows, then in a temporary file. The file
// is unlinked as soon as it is created, so it disappears when it is closed
// or the process dies, whatever happens. Once the store spills, every later
// line goes to the file, where each line ends in '\n' (a data line never
// contains one).
//
// The file part is indexed so that any line can be found without reading
// the file from its start (which made a large spilled header quadratic):
// every markEvery lines, the file offset reached. A line's end is its
// '\n', found in a window of the file, so the index costs an offset per
// markEvery lines and nothing per line: 1,000 sessions of 10 MB messages
// of short lines are about 130 million spilled lines, and even a byte of
// index per line held in memory would be 130 MB. Lines are read through
// the window, so reading lines in order (as parse, the header values,
// the body and emit all do) reads the file once per pass, in large pieces.
type lineStore struct {
	mem     []byte
	memEnds []int32 // end of each in-memory line in mem
	limit   int     // per-session memory threshold
	b       *budget
	dir     string

	file      *os.File
	w         *bufio.Writer
	fileLines int
	fileSize  int64   // bytes written to the file, line ends included
	marks     []int64 // the file offset where line k*markEvery starts
	dataSize  int64   // bytes of all lines, without line ends

	win    []byte // a window of the file, for reading lines back
	winOff int64  // file offset of win[0]
	cur    int64  // the file offset where line curLn starts
	curLn  int    // the file line cur points at
	fills  int    // window reads so far: what keeps the reading linear, for tests

	// err is set when a spilled line could not be written or read back:
	// the message is then incomplete and must not be delivered.
	err error
	// spillFailed: the temporary file could not be created; the message
	// stays in memory rather than be refused.
	spillFailed error
}

const (
	markEvery = 64       // file lines per mark: 8 bytes of index per 64 lines
	winSize   = 32 << 10 // bytes read from the file at a time: held by every session reading a spilled message back
)

// fits reports whether n more bytes may stay in memory for a store that
// holds held bytes there, with limit its own share.
func (b *budget) fits(held, n, limit int) bool {
	return held+n <= limit && b.used.Load()+int64(n) <= b.max.Load()
}

// spillFile creates the temporary file a store spills to, and unlinks it
// at once: it disappears when it is closed or the process dies.
func spillFile(dir, pattern string) (*os.File, *bufio.Writer, error) {
	f, err := os.CreateTemp(dir, pattern)
	if err != nil {
		return nil, nil, err
	}
	_ = os.Remove(f.Name())
	return f, bufio.NewWriterSize(f, 32<<10), nil
}

func newLineStore(limit int, b *budget, dir string) *lineStore {
	return &lineStore{memEnds: make([]int32, 0, 64), limit: limit, b: b, dir: dir}
}

// add takes the line as the parser made it: a string, copied once, here.
func (s *lineStore) add(line string) {
	if s.err != nil {
		return
	}
	s.dataSize += int64(len(line))
	if s.file == nil && s.spillFailed == nil && !s.b.fits(len(s.mem), len(line), s.limit) {
		s.file, s.w, s.spillFailed = spillFile(s.dir, "filter-milter-*.msg")
	}
	if s.file == nil {
		s.mem = growBuf(s.mem, len(line)) // recycled buffers: see bufpool.go
		s.mem = append(s.mem, line...)
		s.b.used.Add(int64(len(line)))
		s.memEnds = append(s.memEnds, int32(len(s.mem)))
		return
	}
	if _, err := s.w.WriteString(line); err != nil {
		s.err = fmt.Errorf("writing the message to a temporary file: %w", err)
		return
	}
	if err := s.w.WriteByte('\n'); err != nil {
		s.err = fmt.Errorf("writing the message to a temporary file: %w", err)
		return
	}
	if s.fileLines%markEvery == 0 {
		s.marks = append(s.marks, s.fileSize)
	}
	s.fileSize += int64(len(line)) + 1
	s.fileLines++
}

// spilled reports whether part of the message is on disk.
func (s *lineStore) spilled() bool { return s.file != nil }

func (s *lineStore) count() int { return len(s.memEnds) + s.fileLines }

// size is the message's bytes, without line ends.
func (s *lineStore) size() int64 { return s.dataSize }

// line returns line i, valid until the next call. On a read error it is
// empty and err is set.
func (s *lineStore) line(i int) []byte {
	if i < len(s.memEnds) {
		start := int32(0)
		if i > 0 {
			start = s.memEnds[i-1]
		}
		return s.mem[start:s.memEnds[i]]
	}
	return s.fileLine(i - len(s.memEnds))
}

func (s *lineStore) fail(err error) {
	if s.err == nil {
		s.err = fmt.Errorf("reading the message back from its temporary file: %w", err)
	}
}

// fileLine returns the file's line j. Its place comes from the cursor left
// by the previous call when j is at most a mark ahead of it, otherwise
// from the mark before j: never more than 2*markEvery lines are skipped.
func (s *lineStore) fileLine(j int) []byte {
	if s.file == nil || s.err != nil || j < 0 || j >= s.fileLines {
		return nil
	}
	if s.w.Buffered() > 0 {
		if err := s.w.Flush(); err != nil {
			s.err = fmt.Errorf("writing the message to a temporary file: %w", err)
			return nil
		}
	}
	if j < s.curLn || j-s.curLn > markEvery {
		s.cur, s.curLn = s.marks[j/markEvery], j/markEvery*markEvery
	}
	for {
		l := s.lineAt(s.cur)
		if l == nil {
			return nil
		}
		s.cur += int64(len(l))
		s.curLn++
		if s.curLn > j {
			return l[:len(l)-1]
		}
	}
}

// lineAt returns the line that starts at file offset off, with its '\n',
// from the window; it reads the window again from off when the line is
// not all in it, with room for the whole line (smtpd's lines are bounded,
// and the file was written by this store: a line with no '\n' before the
// end of the file is a read error).
func (s *lineStore) lineAt(off int64) []byte {
	for n := winSize; ; n *= 2 {
		if off >= s.winOff && off < s.winOff+int64(len(s.win)) {
			rest := s.win[off-s.winOff:]
			if i := bytes.IndexByte(rest, '\n'); i >= 0 {
				return rest[:i+1]
			}
			if s.winOff+int64(len(s.win)) >= s.fileSize {
				s.fail(io.ErrUnexpectedEOF)
				return nil
			}
			n = max(n, 2*len(rest))
		}
		if !s.fill(off, n) {
			return nil
		}
	}
}

// fill reads the window from off on: n bytes, or what the file has from
// off on if that is less.
func (s *lineStore) fill(off int64, n int) bool {
	want := int(min(int64(n), s.fileSize-off))
	if cap(s.win) < want {
		putBuf(s.win)
		s.win = getBuf(want)
	}
	s.win = s.win[:want]
	s.fills++
	got, err := s.file.ReadAt(s.win, off)
	if got < want {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		s.win, s.winOff = s.win[:0], 0
		s.fail(err)
		return false
	}
	s.winOff = off
	return true
}

// each calls fn with lines from, from+1, ... in order; it stops when fn
// returns false or on a read error.
func (s *lineStore) each(from int, fn func(line []byte) bool) {
	for i := from; i < s.count(); i++ {
		l := s.line(i)
		if s.err != nil || !fn(l) {
			return
		}
	}
}

// release frees the memory and removes the file. It is safe to call twice.
func (s *lineStore) release() {
	s.b.used.Add(-int64(len(s.mem)))
	putBuf(s.mem)
	putBuf(s.win)
	s.mem, s.win, s.marks = nil, nil, nil
	if s.file != nil {
		_ = s.file.Close()
		s.file = nil
	}
}

// bodyStore is a new body a milter sent (SMFIR_REPLBODY), as the milter
// wrote it: CRLF text, not dot-stuffed. Like lineStore it stays in memory
// up to its limit while the global budget allows, and then goes to an
// unlinked temporary file, so that a milter that sends hundreds of
// megabytes costs disk, not memory.
type bodyStore struct {
	mem   []byte // counted in b.used
	limit int
	b     *budget
	dir   string

	file *os.File
	w    *bufio.Writer
	size int64

	// onFail is told of the first write error: the message the body is
	// for must then fail rather than be delivered with a truncated body,
	// whoever holds the store by then.
	onFail func(error)
	err    error
}

// Write appends p. A write error is returned and kept: every later Write
// fails too.
func (s *bodyStore) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.b == nil {
		return 0, errors.New("replacement body written after its release")
	}
	if s.file == nil && !s.b.fits(len(s.mem), len(p), s.limit) {
		var err error
		if s.file, s.w, err = spillFile(s.dir, "filter-milter-*.body"); err != nil {
			return 0, s.failWith(err)
		}
		if _, err := s.w.Write(s.mem); err != nil {
			return 0, s.failWith(err)
		}
		s.b.used.Add(-int64(len(s.mem)))
		putBuf(s.mem)
		s.mem = nil
	}
	s.size += int64(len(p))
	if s.file == nil {
		s.mem = growBuf(s.mem, len(p))
		s.mem = append(s.mem, p...)
		s.b.used.Add(int64(len(p)))
		return len(p), nil
	}
	if _, err := s.w.Write(p); err != nil {
		return 0, s.failWith(err)
	}
	return len(p), nil
}

func (s *bodyStore) failWith(err error) error {
	if s.err == nil {
		s.err = fmt.Errorf("keeping a replacement body in a temporary file: %w", err)
		if s.onFail != nil {
			s.onFail(s.err)
		}
	}
	return s.err
}

// each calls fn with the body in pieces of piece bytes (the last may be
// shorter), in order, each valid until the next call; it stops when fn
// returns false or on an error (kept in err, and failing the message).
func (s *bodyStore) each(piece int, fn func([]byte) bool) {
	if s.err != nil {
		return
	}
	if s.file == nil {
		for b := s.mem; len(b) > 0; {
			n := min(len(b), piece)
			if !fn(b[:n]) {
				return
			}
			b = b[n:]
		}
		return
	}
	if err := s.w.Flush(); err != nil {
		s.failWith(err)
		return
	}
	buf := getBuf(piece)[:piece]
	defer putBuf(buf)
	for off := int64(0); off < s.size; {
		want := int(min(int64(piece), s.size-off))
		n, err := s.file.ReadAt(buf[:want], off)
		if n < want {
			if err == nil || errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			s.failWith(err)
			return
		}
		off += int64(n)
		if !fn(buf[:n]) {
			return
		}
	}
}

// release frees the memory and closes the file. It is safe to call twice
// and on a nil store.
func (s *bodyStore) release() {
	if s == nil || s.b == nil {
		return
	}
	s.b.used.Add(-int64(len(s.mem)))
	putBuf(s.mem)
	s.mem = nil
	if s.file != nil {
		_ = s.file.Close()
		s.file, s.w = nil, nil
	}
	s.b = nil
}
