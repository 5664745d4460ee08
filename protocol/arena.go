package protocol

import "unsafe"

// arenaBlock is the size of an Arena's blocks: a few hundred data lines,
// and the largest size the Go allocator serves from its per-CPU caches
// (a larger block is fresh pages each time, which cost a page fault each).
const arenaBlock = 32 << 10

// Arena turns lines into strings without an allocation per line: it copies
// each line into a shared block and returns a string over that copy. A
// 100 KB message is about 1,300 data lines, and a string(line) each was
// the largest allocation cost of the gateway.
//
// The price is that a string keeps its whole block alive. Use it for lines
// whose strings are short-lived (data lines, which the gateway echoes or
// copies into its message buffer), not for values a session keeps.
//
// An Arena is not safe for concurrent use.
type Arena struct {
	block []byte
}

// String returns a string with the bytes of b.
func (a *Arena) String(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if len(b) > arenaBlock/4 {
		return string(b) // a long line gets its own allocation
	}
	if cap(a.block)-len(a.block) < len(b) {
		a.block = make([]byte, 0, arenaBlock)
	}
	start := len(a.block)
	a.block = append(a.block, b...)
	// The bytes from start on are never written again: later lines are
	// appended after them, and a full block is replaced, not reused. So
	// the string's contents never change, which is what a string needs.
	return unsafe.String(&a.block[start], len(b))
}
