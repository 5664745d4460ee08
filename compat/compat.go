// Package compat holds what differs between versions of OpenSMTPD's filter
// protocol (smtpd-filters(7)), so that the rest of filter-milter sees one
// model.
//
// smtpd puts the protocol version in the second field of every report and
// filter line; before OpenSMTPD 7.6 that is the only place a filter can
// learn it (config|protocol arrived in 7.6). The versions that were
// released, and what each changed on the wire:
//
//	0.4  OpenSMTPD 6.6.x         answers are TOKEN|SESSION; tx-mail/tx-rcpt msgid|address|result; link-auth username|result
//	0.5  OpenBSD -current only   answers become SESSION|TOKEN, the order of the requests
//	0.6  6.7.0 to 7.3 (Debian 11 and 12 ship 6.8.0p2)   tx-mail/tx-rcpt msgid|result|address
//	0.7  7.4.0 and later         link-auth result|username
//
// Each move put the field that may contain '|' (an address, a user name)
// last, where the protocol allows '|'.
package compat

import (
	"fmt"
	"strconv"
)

// Version is a filter protocol version, "major.minor".
type Version struct{ Major, Minor int }

// Newest is the newest version whose layout this package knows.
var Newest = Version{0, 7}

// ParseVersion parses "major.minor", both parts decimal numbers without
// sign or leading zeros.
//
// The parts are read as numbers because comparing versions as strings is
// a known bug: "0.10" < "0.7" as strings (filter-senderscore had it).
func ParseVersion(s string) (Version, error) {
	for i := 0; i < len(s); i++ {
		if s[i] != '.' {
			continue
		}
		major, ok1 := atoi(s[:i])
		minor, ok2 := atoi(s[i+1:])
		if !ok1 || !ok2 {
			break
		}
		return Version{major, minor}, nil
	}
	return Version{}, fmt.Errorf("compat: bad protocol version %q: want major.minor in decimal digits", s)
}

// atoi reads a non-empty string of at most 9 decimal digits: no sign, no
// spaces, no overflow on any platform, and no leading zero, so that
// String gives back the text that was parsed (smtpd writes "0.7").
func atoi(s string) (int, bool) {
	if len(s) == 0 || len(s) > 9 || (s[0] == '0' && len(s) > 1) {
		return 0, false
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int(c-'0')
	}
	return n, true
}

// Less reports whether v is older than o.
func (v Version) Less(o Version) bool {
	if v.Major != o.Major {
		return v.Major < o.Major
	}
	return v.Minor < o.Minor
}

// String returns "major.minor".
func (v Version) String() string {
	return strconv.Itoa(v.Major) + "." + strconv.Itoa(v.Minor)
}

// Known reports whether v is one of the versions 0.4 to 0.7 that this
// package describes. 0.4 is the first version that shipped in a release
// (6.6.0); the versions before it lived only in OpenBSD -current.
func Known(v Version) bool {
	return v.Major == 0 && v.Minor >= 4 && v.Minor <= 7
}

// Layout says where fields sit in one protocol version.
type Layout struct {
	Version Version

	// TokenFirst: before 0.5 the filter's answers are
	// filter-result|TOKEN|SESSION|... and filter-dataline|TOKEN|SESSION|...
	// (the requests were SESSION|TOKEN in every version). smtpd silently
	// ignores an answer for a session id it does not know, so the wrong
	// order hangs sessions instead of failing.
	TokenFirst bool

	// TxAddressBeforeResult: before 0.6 the tx-mail and tx-rcpt reports
	// are msgid|address|result; from 0.6 they are msgid|result|address.
	TxAddressBeforeResult bool

	// AuthUserBeforeResult: before 0.7 the link-auth report is
	// username|result; from 0.7 it is result|username.
	AuthUserBeforeResult bool
}

// For returns the layout of version v. A version newer than Newest gets
// Newest's layout, with Version still v: new versions have so far only
// moved fields of events that existed before, and smtpd gives a filter no
// way to refuse a version, so the newest known layout is the best guess.
// Versions older than 0.4 get 0.4's layout.
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
