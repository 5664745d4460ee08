package gateway

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"sync/atomic"
)

// budget is the memory all sessions' message buffers may use together.
type budget struct {
	used atomic.Int64
	max  int64
}

// lineStore keeps a message's data lines: in memory up to the session's
// limit while the global budget allows, then in a temporary file. The file
// is unlinked as soon as it is created, so it disappears when it is closed
// or the process dies, whatever happens. Once the store spills, every later
// line goes to the file, where each line ends in '\n' (a data line never
// contains one): the file part needs no index in memory, so a message of
// any size costs a bounded amount of memory.
type lineStore struct {
	mem     []byte
	memEnds []int32 // end of each in-memory line in mem
	limit   int     // per-session memory threshold
	b       *budget
	dir     string

	file      *os.File
	w         *bufio.Writer
	fileLines int
	dataSize  int64 // bytes of all lines, without line ends
	scratch   []byte

	// err is set when a spilled line could not be written or read back:
	// the message is then incomplete and must not be delivered.
	err error
	// spillFailed: the temporary file could not be created; the message
	// stays in memory rather than be refused.
	spillFailed error
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
	if s.file == nil && s.spillFailed == nil &&
		(len(s.mem)+len(line) > s.limit || s.b.used.Load()+int64(len(line)) > s.b.max) {
		f, err := os.CreateTemp(s.dir, "filter-milter-*.msg")
		if err != nil {
			s.spillFailed = err
		} else {
			_ = os.Remove(f.Name())
			s.file, s.w = f, bufio.NewWriterSize(f, 32<<10)
		}
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
	s.fileLines++
}

// spilled reports whether part of the message is on disk.
func (s *lineStore) spilled() bool { return s.file != nil }

func (s *lineStore) count() int { return len(s.memEnds) + s.fileLines }

// size is the message's bytes, without line ends.
func (s *lineStore) size() int64 { return s.dataSize }

// line returns line i. A line from the file is found by reading the file
// from its start (only header lines are looked up this way, and only when
// the header itself went to disk) into a scratch buffer that the next call
// reuses; on a read error it is empty and err is set.
func (s *lineStore) line(i int) []byte {
	if i < len(s.memEnds) {
		start := int32(0)
		if i > 0 {
			start = s.memEnds[i-1]
		}
		return s.mem[start:s.memEnds[i]]
	}
	var found []byte
	s.eachInFile(i-len(s.memEnds), func(l []byte) bool { found = l; return false })
	return found
}

func (s *lineStore) fail(err error) {
	if s.err == nil {
		s.err = fmt.Errorf("reading the message back from its temporary file: %w", err)
	}
}

// each calls fn with lines from, from+1, ... in order; it stops when fn
// returns false or on a read error.
func (s *lineStore) each(from int, fn func(line []byte) bool) {
	for i := from; i < len(s.memEnds); i++ {
		if !fn(s.line(i)) {
			return
		}
	}
	s.eachInFile(max(from-len(s.memEnds), 0), fn)
}

// eachInFile calls fn with the file's lines from the skip-th on.
func (s *lineStore) eachInFile(skip int, fn func(line []byte) bool) {
	if s.file == nil || s.err != nil || skip >= s.fileLines {
		return
	}
	if err := s.w.Flush(); err != nil {
		s.fail(err)
		return
	}
	br := bufio.NewReaderSize(io.NewSectionReader(s.file, 0, 1<<62), 32<<10)
	for n := 0; n < s.fileLines; n++ {
		l, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			// A line longer than the reader's buffer: gather it.
			s.scratch = append(s.scratch[:0], l...)
			for err == bufio.ErrBufferFull {
				l, err = br.ReadSlice('\n')
				s.scratch = append(s.scratch, l...)
			}
			l = s.scratch
		}
		if err != nil {
			s.fail(err)
			return
		}
		if n < skip {
			continue
		}
		if !fn(l[:len(l)-1]) {
			return
		}
	}
}

// release frees the memory and removes the file. It is safe to call twice.
func (s *lineStore) release() {
	s.b.used.Add(-int64(len(s.mem)))
	putBuf(s.mem)
	s.mem = nil
	if s.file != nil {
		_ = s.file.Close()
		s.file = nil
	}
}
