package gateway

import (
	"fmt"
	"strings"

	"github.com/filter-milter/filter-milter/milter"
)

// A milter's changes to the message: header fields added, inserted,
// changed or deleted, and a new body.

// apply carries out one milter's modifications, in the order it sent them,
// so that the next milter sees the message as this one left it. Header
// changes that would corrupt the message are refused and reported in
// refused; envelope changes and quarantine are left to the caller's policy.
//
// repl is the store the milter's new body was streamed into (see
// newReplacement), or nil. The message takes it over: it becomes the body
// when mods hold a ReplaceBody, and is released otherwise. A ReplaceBody
// with Body set appends those bytes to the new body.
//
// The semantics are Sendmail's and Postfix's: an insert index is 0-based
// over all current fields (past the end appends); a change index is
// 1-based among the fields of that name, case-insensitive, 0 meaning 1; an
// empty value deletes; a change of a field that does not exist adds it.
// The fields are a seq, so an insert anywhere is O(log n); the fields of
// each name a change in this batch refers to are gathered once (one pass
// over the header) into a seq of their own, kept in document order as
// fields come and go, so that finding the Index-th is O(log n) and an
// insert of such a name O(log n · log k).
func (m *message) apply(mods []milter.Modification, repl *bodyStore) (refused []error) {
	byName := m.namesChanged(mods)
	var newBody *bodyStore
	for _, mod := range mods {
		switch mod.Kind {
		case milter.AddHeader, milter.InsertHeader, milter.ChangeHeader:
			if err := checkHeader(mod); err != nil {
				refused = append(refused, err)
				continue
			}
		}
		switch mod.Kind {
		case milter.AddHeader:
			m.insertField(m.fields.len(), written(mod), byName)
		case milter.InsertHeader:
			m.insertField(max(0, min(mod.Index, m.fields.len())), written(mod), byName)
		case milter.ChangeHeader:
			m.changeHeader(mod, byName)
		case milter.ReplaceBody:
			if newBody == nil {
				// The first chunk of this milter's replacement starts a new body.
				newBody, repl = repl, nil
				if newBody == nil {
					newBody = m.newReplacement()
				}
			}
			if mod.Body != nil {
				_, _ = newBody.Write(mod.Body) // an error fails the message (onFail)
			}
		}
	}
	repl.release()
	if newBody != nil {
		m.newBody.release()
		m.newBody = newBody
	}
	return refused
}

// sameName is the fields of one name, in document order; each element is
// the field's node in message.fields.
type sameName = seq[*tnode[field]]

// namesChanged gathers, in one pass over the header, the fields of every
// name that a ChangeHeader of mods refers to, keyed by lower-case name.
func (m *message) namesChanged(mods []milter.Modification) map[string]*sameName {
	var byName map[string]*sameName
	for _, mod := range mods {
		if mod.Kind == milter.ChangeHeader && checkHeader(mod) == nil {
			if byName == nil {
				byName = map[string]*sameName{}
			}
			byName[strings.ToLower(mod.Name)] = nil
		}
	}
	if byName == nil {
		return nil
	}
	found := map[string][]tnode[*tnode[field]]{}
	var buf []byte
	m.fields.each(func(n *tnode[field]) bool {
		buf = m.lowerName(buf[:0], &n.v)
		if _, ok := byName[string(buf)]; ok {
			k := string(buf)
			found[k] = append(found[k], tnode[*tnode[field]]{v: n})
		}
		return true
	})
	for k := range byName {
		s := &sameName{}
		s.build(found[k])
		byName[k] = s
	}
	return byName
}

// insertField puts f at position pos of the header, and among the fields
// of its name if a change refers to that name.
func (m *message) insertField(pos int, f field, byName map[string]*sameName) {
	n := m.fields.insert(pos, f)
	if byName == nil {
		return
	}
	same := byName[strings.ToLower(f.w.name)]
	if same == nil {
		return
	}
	// Its place among them: how many of them are before pos. Their
	// positions in the header grow with theirs in same.
	k := 0
	for c := same.root; c != nil; {
		if rank(c.v) < pos {
			k += treeSize(c.l) + 1
			c = c.r
		} else {
			c = c.l
		}
	}
	same.insert(k, n)
}

func written(mod milter.Modification) field {
	return field{first: -1, last: -1, w: &writtenHdr{name: mod.Name, value: strings.ReplaceAll(mod.Value, "\r\n", "\n")}}
}

// changeHeader changes or, with an empty value, deletes the Index-th field
// named Name (1-based, case-insensitive; index 0 means 1, as in Postfix).
// A change of a field that does not exist adds it, as Sendmail does.
func (m *message) changeHeader(mod milter.Modification, byName map[string]*sameName) {
	same := byName[strings.ToLower(mod.Name)]
	del := strings.TrimSpace(mod.Value) == ""
	if want := max(mod.Index, 1); want <= same.len() {
		sn := same.at(want - 1)
		if del {
			m.fields.remove(sn.v)
			same.remove(sn)
		} else {
			sn.v.v = written(mod)
		}
		return
	}
	if !del {
		m.insertField(m.fields.len(), written(mod), byName)
	}
}

// checkHeader refuses a header a milter asked for that cannot be written
// safely: a name that is not printable ASCII without ':' and white space,
// a value with NUL or a bare CR, or a line break not followed by white
// space (which would start a new field or end the header).
func checkHeader(mod milter.Modification) error {
	if _, ok := nameOf([]byte(mod.Name + ":")); !ok || strings.ContainsAny(mod.Name, " \t:") {
		return fmt.Errorf("%s: invalid header name %q", mod.Kind, mod.Name)
	}
	v := strings.ReplaceAll(mod.Value, "\r\n", "\n")
	if strings.ContainsAny(v, "\x00\r") {
		return fmt.Errorf("%s %s: value contains NUL or a bare CR", mod.Kind, mod.Name)
	}
	for i := strings.IndexByte(v, '\n'); i >= 0; i = strings.IndexByte(v, '\n') {
		if i+1 >= len(v) || (v[i+1] != ' ' && v[i+1] != '\t') {
			return fmt.Errorf("%s %s: line break not followed by white space", mod.Kind, mod.Name)
		}
		v = v[i+1:]
	}
	return nil
}
