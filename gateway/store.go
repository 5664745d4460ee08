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
// line goes to the file: lines are never split between the two.
type lineStore struct {
	mem   []byte
	ends  []int64 // end offset of each line in the whole message
	limit int     // per-session memory threshold
	b     *budget
	dir   string

	file     *os.File
	w        *bufio.Writer
	fileSize int64
	scratch  []byte

	// err is set when a spilled line could not be written or read back:
	// the message is then incomplete and must not be delivered.
	err error
	// spillFailed: the temporary file could not be created; the message
	// stays in memory rather than be refused.
	spillFailed error
}

func newLineStore(limit int, b *budget, dir string) *lineStore {
	return &lineStore{mem: make([]byte, 0, min(limit, 4096)), ends: make([]int64, 0, 64), limit: limit, b: b, dir: dir}
}

func (s *lineStore) add(line []byte) {
	if s.err != nil {
		return
	}
	if s.file == nil && s.spillFailed == nil &&
		(len(s.mem)+len(line) > s.limit || s.b.used.Load()+int64(len(line)) > s.b.max) {
		f, err := os.CreateTemp(s.dir, "filter-milter-*.msg")
		if err != nil {
			s.spillFailed = err
		} else {
			_ = os.Remove(f.Name())
			s.file, s.w = f, bufio.NewWriterSize(f, 64<<10)
		}
	}
	if s.file == nil {
		s.mem = append(s.mem, line...)
		s.b.used.Add(int64(len(line)))
		s.ends = append(s.ends, int64(len(s.mem)))
		return
	}
	if _, err := s.w.Write(line); err != nil {
		s.err = fmt.Errorf("writing the message to a temporary file: %w", err)
		return
	}
	s.fileSize += int64(len(line))
	s.ends = append(s.ends, int64(len(s.mem))+s.fileSize)
}

// spilled reports whether part of the message is on disk.
func (s *lineStore) spilled() bool { return s.file != nil }

func (s *lineStore) count() int { return len(s.ends) }

func (s *lineStore) size() int64 {
	if len(s.ends) == 0 {
		return 0
	}
	return s.ends[len(s.ends)-1]
}

func (s *lineStore) bounds(i int) (start, end int64) {
	if i > 0 {
		start = s.ends[i-1]
	}
	return start, s.ends[i]
}

func (s *lineStore) inMemory(i int) bool {
	_, end := s.bounds(i)
	return end <= int64(len(s.mem))
}

// line returns line i. A line from the file is read into a scratch buffer
// that the next call reuses; on a read error it is empty and err is set.
func (s *lineStore) line(i int) []byte {
	start, end := s.bounds(i)
	if s.inMemory(i) {
		return s.mem[start:end]
	}
	if err := s.w.Flush(); err != nil {
		s.fail(err)
		return nil
	}
	buf := s.buffer(int(end - start))
	if _, err := s.file.ReadAt(buf, start-int64(len(s.mem))); err != nil {
		s.fail(err)
		return nil
	}
	return buf
}

func (s *lineStore) buffer(n int) []byte {
	if cap(s.scratch) < n {
		s.scratch = make([]byte, n)
	}
	return s.scratch[:n]
}

func (s *lineStore) fail(err error) {
	if s.err == nil {
		s.err = fmt.Errorf("reading the message back from its temporary file: %w", err)
	}
}

// each calls fn with lines from, from+1, ... in order, reading the file
// sequentially; it stops when fn returns false or on a read error.
func (s *lineStore) each(from int, fn func(line []byte) bool) {
	i := from
	for ; i < len(s.ends) && s.inMemory(i); i++ {
		if !fn(s.line(i)) {
			return
		}
	}
	if i >= len(s.ends) || s.err != nil {
		return
	}
	if err := s.w.Flush(); err != nil {
		s.fail(err)
		return
	}
	start, _ := s.bounds(i)
	br := bufio.NewReaderSize(io.NewSectionReader(s.file, start-int64(len(s.mem)), s.fileSize), 64<<10)
	for ; i < len(s.ends); i++ {
		a, b := s.bounds(i)
		buf := s.buffer(int(b - a))
		if _, err := io.ReadFull(br, buf); err != nil {
			s.fail(err)
			return
		}
		if !fn(buf) {
			return
		}
	}
}

// release frees the memory and removes the file. It is safe to call twice.
func (s *lineStore) release() {
	s.b.used.Add(-int64(len(s.mem)))
	s.mem = nil
	if s.file != nil {
		_ = s.file.Close()
		s.file = nil
	}
}
