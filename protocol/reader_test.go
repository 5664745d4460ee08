package protocol

import (
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

type step struct {
	line string
	err  error
}

func readAll(t *testing.T, r *Reader, want []step) {
	t.Helper()
	for i, w := range want {
		got, err := r.ReadLine()
		if !errors.Is(err, w.err) || (w.err == nil && string(got) != w.line) {
			t.Fatalf("ReadLine %d = %d bytes %.40q, %v; want %d bytes %.40q, %v", i, len(got), got, err, len(w.line), w.line, w.err)
		}
	}
}

func TestReaderLines(t *testing.T) {
	mb := strings.Repeat("x", 1<<20)
	in := "config|ready\n" +
		"\n" +
		"a|b\r\n" + // the '\r' is data
		"two\r\r\n" +
		mb + "\n" +
		"after\n" +
		"last" // no '\n' before EOF
	for name, src := range map[string]func() io.Reader{
		"whole":    func() io.Reader { return strings.NewReader(in) },
		"one byte": func() io.Reader { return iotest.OneByteReader(strings.NewReader(in)) },
		"half":     func() io.Reader { return iotest.HalfReader(strings.NewReader(in)) },
		"data+EOF": func() io.Reader { return iotest.DataErrReader(strings.NewReader(in)) },
	} {
		t.Run(name, func(t *testing.T) {
			readAll(t, NewReader(src(), 0), []step{
				{"config|ready", nil}, {"", nil}, {"a|b\r", nil}, {"two\r\r", nil}, {mb, nil},
				{"after", nil}, {"last", nil}, {"", io.EOF}, {"", io.EOF},
			})
		})
	}
}

func TestReaderEmptyInput(t *testing.T) {
	readAll(t, NewReader(strings.NewReader(""), 0), []step{{"", io.EOF}})
	readAll(t, NewReader(strings.NewReader("\n"), 0), []step{{"", nil}, {"", io.EOF}})
	readAll(t, NewReader(strings.NewReader("\r"), 0), []step{{"\r", nil}, {"", io.EOF}})
}

func TestReaderManySmallLines(t *testing.T) {
	var b strings.Builder
	const n = 100000
	for i := range n {
		b.WriteString("filter|0.7|1|smtp-in|data-line|a|b|line ")
		b.WriteString(strconv.Itoa(i))
		b.WriteByte('\n')
	}
	r := NewReader(strings.NewReader(b.String()), 0)
	for i := range n {
		got, err := r.ReadLine()
		if want := "filter|0.7|1|smtp-in|data-line|a|b|line " + strconv.Itoa(i); err != nil || string(got) != want {
			t.Fatalf("line %d = %q, %v; want %q", i, got, err, want)
		}
	}
	if _, err := r.ReadLine(); err != io.EOF {
		t.Fatalf("after %d lines: %v, want io.EOF", n, err)
	}
}

func TestReaderLimit(t *testing.T) {
	for _, limit := range []int{10, 1000, readBufSize - 1, readBufSize, readBufSize + 1, 3 * readBufSize} {
		t.Run(strconv.Itoa(limit), func(t *testing.T) {
			exact := strings.Repeat("e", limit)
			over := strings.Repeat("o", limit+1)
			huge := strings.Repeat("h", 5*limit+readBufSize)
			in := "first\n" + over + "\n" + exact + "\n" + huge + "\n" + exact + "\r\n" + "next\n" + over
			sources := map[string]func() io.Reader{
				"whole": func() io.Reader { return strings.NewReader(in) },
			}
			if limit <= 2000 {
				// Byte by byte only for the small limits: the large ones
				// would take seconds and test nothing more.
				sources["one byte"] = func() io.Reader { return iotest.OneByteReader(strings.NewReader(in)) }
			}
			for name, src := range sources {
				t.Run(name, func(t *testing.T) {
					readAll(t, NewReader(src(), limit), []step{
						{"first", nil},
						{"", ErrLineTooLong},
						{exact, nil}, // exactly the limit passes
						{"", ErrLineTooLong},
						{"", ErrLineTooLong}, // the '\r' counts
						{"next", nil},
						{"", ErrLineTooLong}, // the last line, without '\n'
						{"", io.EOF},
					})
				})
			}
		})
	}
}

func TestReaderReleasesAHugeBuffer(t *testing.T) {
	r := NewReader(strings.NewReader(strings.Repeat("x", 4*keepBuf)+"\nsmall\n"), 0)
	readAll(t, r, []step{{strings.Repeat("x", 4*keepBuf), nil}, {"small", nil}})
	if cap(r.buf) > keepBuf {
		t.Errorf("the reader keeps a %d-byte buffer after a long line", cap(r.buf))
	}
}

func TestReaderError(t *testing.T) {
	boom := errors.New("boom")
	r := NewReader(io.MultiReader(strings.NewReader("ok\npartial"), iotest.ErrReader(boom)), 0)
	readAll(t, r, []step{{"ok", nil}, {"", boom}})
}

// OnRead's hooks run around each read of the underlying reader, and only
// then: the lines a read brought are all returned before the next read,
// so before sees every line of the previous read handed out.
func TestReaderOnRead(t *testing.T) {
	// A pipe of whole writes: each read returns one chunk.
	chunks := []string{"a\nb\n", "c\n", "d\ne\nf\n"}
	src := &chunkReader{chunks: chunks}
	r := NewReader(src, 0)
	var log []string
	r.OnRead(func() { log = append(log, "before") }, func() { log = append(log, "after") })
	for {
		line, err := r.ReadLine()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		log = append(log, string(line))
	}
	want := "before after a b before after c before after d e f before after"
	if got := strings.Join(log, " "); got != want {
		t.Fatalf("hooks and lines:\n got %s\nwant %s", got, want)
	}
}

type chunkReader struct{ chunks []string }

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.chunks[0])
	c.chunks = c.chunks[1:]
	return n, nil
}
