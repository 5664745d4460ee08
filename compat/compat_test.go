package compat

import "testing"

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]Version{"0.4": {0, 4}, "0.6": {0, 6}, "0.7": {0, 7}, "0.10": {0, 10}, "1.0": {1, 0}} {
		v, err := ParseVersion(in)
		if err != nil || v != want {
			t.Errorf("ParseVersion(%q) = %v, %v; want %v", in, v, err, want)
		}
		if v.String() != in {
			t.Errorf("%v.String() = %q", v, v.String())
		}
	}
	for _, in := range []string{"", "x", "1.", ".1", "-1.2", "0.-1", "0.6.1", "1", "+0.6", "0.x"} {
		if v, err := ParseVersion(in); err == nil {
			t.Errorf("ParseVersion(%q) = %v, want an error", in, v)
		}
	}
}

func TestLessIsNumeric(t *testing.T) {
	if !(Version{0, 7}).Less(Version{0, 10}) || (Version{0, 10}).Less(Version{0, 7}) {
		t.Error("0.7 < 0.10 must hold: versions compare as numbers")
	}
	if !(Version{0, 9}).Less(Version{1, 0}) || (Version{0, 6}).Less(Version{0, 6}) {
		t.Error("Less is wrong across majors or on equal versions")
	}
}

func TestFor(t *testing.T) {
	cases := []struct {
		v               Version
		token, tx, auth bool
		known           bool
	}{
		{Version{0, 4}, true, true, true, true},
		{Version{0, 5}, false, true, true, true},
		{Version{0, 6}, false, false, true, true},
		{Version{0, 7}, false, false, false, true},
		{Version{0, 8}, false, false, false, false},
		{Version{1, 0}, false, false, false, false},
	}
	for _, c := range cases {
		l := For(c.v)
		if l.Version != c.v || l.TokenFirst != c.token || l.TxAddressBeforeResult != c.tx || l.AuthUserBeforeResult != c.auth {
			t.Errorf("For(%v) = %+v", c.v, l)
		}
		if Known(c.v) != c.known {
			t.Errorf("Known(%v) = %v", c.v, !c.known)
		}
	}
}
