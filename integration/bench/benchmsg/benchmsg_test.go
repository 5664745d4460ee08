package benchmsg

import (
	"bytes"
	"testing"
)

func TestLinesSizeAndStuffing(t *testing.T) {
	for _, size := range []int{2048, 100 << 10} {
		lines, queued := Lines(size)
		n, stuffed := 0, 0
		for _, l := range lines {
			n += len(l) + 2
			if bytes.HasPrefix(l, []byte("..")) {
				stuffed++
			}
		}
		if n != queued || queued < size || queued > size+80 {
			t.Errorf("size %d: queued %d, lines add up to %d", size, queued, n)
		}
		if size > 10000 && stuffed == 0 {
			t.Errorf("size %d: no dot-stuffed line", size)
		}
	}
}
