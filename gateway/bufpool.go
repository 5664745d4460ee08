package gateway

import (
	"math/bits"
	"sync"
)

// Byte buffers are recycled by size class (powers of two from 4 KiB to
// 1 MiB): every message used to grow a fresh buffer for its lines and
// another for the lines written back, which made allocation the largest
// cost at 100 KB. Each buffer has one owner, which gets it here and puts
// it back itself: a message store (store.go) in release, a session its
// out buffer in finish. Idle buffers in a sync.Pool are freed by the GC,
// so the pool holds no memory the process does not use.
const (
	minClassShift = 12 // 4 KiB
	maxClassShift = 20 // 1 MiB
)

var bufPools [maxClassShift - minClassShift + 1]sync.Pool

// classOf is the size class that holds n bytes, or -1 for more than the
// largest class.
func classOf(n int) int {
	if n <= 1<<minClassShift {
		return 0
	}
	c := bits.Len(uint(n-1)) - minClassShift
	if c >= len(bufPools) {
		return -1
	}
	return c
}

// getBuf returns an empty buffer with room for at least n bytes.
func getBuf(n int) []byte {
	c := classOf(n)
	if c < 0 {
		return make([]byte, 0, n)
	}
	if p, ok := bufPools[c].Get().(*[]byte); ok {
		return (*p)[:0]
	}
	return make([]byte, 0, 1<<(c+minClassShift))
}

// putBuf recycles b, which the caller must not use again. Buffers not made
// by getBuf (another capacity) are left to the GC.
func putBuf(b []byte) {
	c := classOf(cap(b))
	if c < 0 || cap(b) != 1<<(c+minClassShift) {
		return
	}
	b = b[:0]
	bufPools[c].Put(&b)
}

// growBuf returns b with room for n more bytes, moving it to a buffer of
// the next size class when needed (and recycling the old one).
func growBuf(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b
	}
	nb := getBuf(max(len(b)+n, 2*cap(b)))
	nb = append(nb, b...)
	putBuf(b)
	return nb
}
