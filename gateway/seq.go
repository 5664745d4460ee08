package gateway

import "math/rand/v2"

// seq is a sequence with O(log n) expected insertion and removal at any
// position, lookup by position and position of an element: a treap keyed
// by position (each node knows the size of its subtree) with parent links.
// The header fields of a message are one (milters insert at any index, and
// a plain slice made thousands of inserts at the top quadratic); the fields
// of one name are another.
//
// Priorities are random per node, so no order of insertions a milter can
// choose makes the tree deep.
type seq[T any] struct{ root *tnode[T] }

type tnode[T any] struct {
	l, r, p *tnode[T]
	size    int32 // nodes in this subtree
	prio    uint32
	v       T
}

func treeSize[T any](n *tnode[T]) int {
	if n == nil {
		return 0
	}
	return int(n.size)
}

// pull recomputes n's size and points its children back at it.
func (n *tnode[T]) pull() {
	n.size = int32(1 + treeSize(n.l) + treeSize(n.r))
	if n.l != nil {
		n.l.p = n
	}
	if n.r != nil {
		n.r.p = n
	}
}

// merge joins a and b, every node of a before every node of b.
func merge[T any](a, b *tnode[T]) *tnode[T] {
	if a == nil {
		return b
	}
	if b == nil {
		return a
	}
	if a.prio > b.prio {
		a.r = merge(a.r, b)
		a.pull()
		return a
	}
	b.l = merge(a, b.l)
	b.pull()
	return b
}

// split cuts n into its first k nodes and the rest.
func split[T any](n *tnode[T], k int) (a, b *tnode[T]) {
	if n == nil {
		return nil, nil
	}
	if treeSize(n.l) >= k {
		a, n.l = split(n.l, k)
		n.pull()
		return a, n
	}
	n.r, b = split(n.r, k-treeSize(n.l)-1)
	n.pull()
	return n, b
}

func (s *seq[T]) setRoot(n *tnode[T]) {
	s.root = n
	if n != nil {
		n.p = nil
	}
}

func (s *seq[T]) len() int { return treeSize(s.root) }

// insert puts v at position k (0 <= k <= len) and returns its node.
func (s *seq[T]) insert(k int, v T) *tnode[T] {
	n := &tnode[T]{size: 1, prio: rand.Uint32(), v: v}
	a, b := split(s.root, k)
	s.setRoot(merge(merge(a, n), b))
	return n
}

// remove takes node n, which must be in s, out of it.
func (s *seq[T]) remove(n *tnode[T]) {
	a, b := split(s.root, rank(n))
	_, c := split(b, 1)
	s.setRoot(merge(a, c))
	n.l, n.r, n.p = nil, nil, nil
}

// rank is n's position in its sequence.
func rank[T any](n *tnode[T]) int {
	r := treeSize(n.l)
	for ; n.p != nil; n = n.p {
		if n == n.p.r {
			r += treeSize(n.p.l) + 1
		}
	}
	return r
}

// at is the node at position k (0 <= k < len).
func (s *seq[T]) at(k int) *tnode[T] {
	n := s.root
	for n != nil {
		switch l := treeSize(n.l); {
		case k < l:
			n = n.l
		case k == l:
			return n
		default:
			k -= l + 1
			n = n.r
		}
	}
	return nil
}

// build makes s the sequence of nodes, in order, in linear time.
func (s *seq[T]) build(nodes []tnode[T]) {
	var bd builder[T]
	for i := range nodes {
		bd.push(&nodes[i])
	}
	bd.finish(s)
}

// builder makes a seq from nodes given in order, in linear time: a
// Cartesian tree on random priorities, built on a stack that holds its
// right spine. A node leaves the stack once its subtree is complete, and
// gets its size then.
type builder[T any] struct{ spine []*tnode[T] }

func (bd *builder[T]) push(x *tnode[T]) {
	x.prio = rand.Uint32()
	x.l, x.r, x.p = nil, nil, nil
	var last *tnode[T]
	for len(bd.spine) > 0 && bd.spine[len(bd.spine)-1].prio < x.prio {
		last = bd.spine[len(bd.spine)-1]
		bd.spine = bd.spine[:len(bd.spine)-1]
		last.pull()
	}
	x.l = last
	if len(bd.spine) > 0 {
		bd.spine[len(bd.spine)-1].r = x
	}
	bd.spine = append(bd.spine, x)
}

func (bd *builder[T]) finish(s *seq[T]) {
	for i := len(bd.spine) - 1; i >= 0; i-- {
		bd.spine[i].pull()
	}
	s.root = nil
	if len(bd.spine) > 0 {
		s.setRoot(bd.spine[0])
	}
	bd.spine = nil
}

// each calls fn with the nodes in order until it returns false.
func (s *seq[T]) each(fn func(*tnode[T]) bool) {
	stack := make([]*tnode[T], 0, 64)
	n := s.root
	for n != nil || len(stack) > 0 {
		for ; n != nil; n = n.l {
			stack = append(stack, n)
		}
		n = stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if !fn(n) {
			return
		}
		n = n.r
	}
}
