// Package compat holds what differs between versions of OpenSMTPD's filter
// protocol, so that the rest of filter-milter sees one model.
//
// The versions and their releases (shared/docs/filter-protocol.md §7):
//
//	0.4  OpenSMTPD 6.6.x        responses are TOKEN|SESSION; tx-mail/tx-rcpt msgid|address|result; link-auth user|result
//	0.5  OpenBSD -current only  responses become SESSION|TOKEN
//	0.6  6.7.0 to 7.3 (Debian 11 and 12: 6.8.0p2)   tx-mail/tx-rcpt msgid|result|address
//	0.7  7.4.0 and later        link-auth result|user (a '|' in a user name broke the old order)
package compat

import (
	"fmt"
	"strconv"
	"strings"
)

// Version is a filter protocol version, "major.minor".
type Version struct{ Major, Minor int }

// Newest is the newest version whose layout is known.
var Newest = Version{0, 7}

// ParseVersion reads "0.6". The parts are numbers: comparing versions as
// strings is a known bug ("0.10" < "0.7"); filter-senderscore had it.
func ParseVersion(s string) (Version, error) {
	maj, min, ok := strings.Cut(s, ".")
	if !ok {
		return Version{}, fmt.Errorf("protocol version %q: want major.minor", s)
	}
	a, err1 := strconv.Atoi(maj)
	b, err2 := strconv.Atoi(min)
	if err1 != nil || err2 != nil || a < 0 || b < 0 || maj[0] == '+' || min[0] == '+' {
		return Version{}, fmt.Errorf("protocol version %q: want major.minor", s)
	}
	return Version{a, b}, nil
}

// Less reports whether v is older than o.
func (v Version) Less(o Version) bool {
	return v.Major < o.Major || (v.Major == o.Major && v.Minor < o.Minor)
}

func (v Version) String() string { return strconv.Itoa(v.Major) + "." + strconv.Itoa(v.Minor) }

// Known reports whether v is a released version this package describes.
func Known(v Version) bool { return v.Major == 0 && v.Minor >= 4 && v.Minor <= 7 }

// Layout says where fields sit in one protocol version.
type Layout struct {
	Version Version
	// TokenFirst: before 0.5 the filter's answers are
	// filter-result|TOKEN|SESSION|... and filter-dataline|TOKEN|SESSION|...
	// smtpd silently ignores an answer for a session id it does not know,
	// so the wrong order hangs sessions instead of failing.
	TokenFirst bool
	// TxAddressBeforeResult: before 0.6 tx-mail and tx-rcpt are
	// msgid|address|result; from 0.6 msgid|result|address.
	TxAddressBeforeResult bool
	// AuthUserBeforeResult: before 0.7 link-auth is username|result;
	// from 0.7 result|username.
	AuthUserBeforeResult bool
}

// For returns the layout of version v. A version newer than Newest gets
// Newest's layout: new versions have so far only moved fields of events
// that existed before, and the newest layout is the best guess.
func For(v Version) Layout {
	w := v
	if Newest.Less(v) {
		w = Newest
	}
	return Layout{
		Version:               v,
		TokenFirst:            w.Less(Version{0, 5}),
		TxAddressBeforeResult: w.Less(Version{0, 6}),
		AuthUserBeforeResult:  w.Less(Version{0, 7}),
	}
}
