package compat

import "testing"

func TestParseVersion(t *testing.T) {
	for _, c := range []struct {
		in   string
		want Version
	}{
		{"0.4", Version{0, 4}},
		{"0.5", Version{0, 5}},
		{"0.6", Version{0, 6}},
		{"0.7", Version{0, 7}},
		{"0.8", Version{0, 8}},
		{"0.10", Version{0, 10}},
		{"1.0", Version{1, 0}},
		{"12.345", Version{12, 345}},
	} {
		v, err := ParseVersion(c.in)
		if err != nil || v != c.want {
			t.Errorf("ParseVersion(%q) = %v, %v; want %v", c.in, v, err, c.want)
		}
		if v.String() != c.in {
			t.Errorf("%#v.String() = %q, want %q", v, v.String(), c.in)
		}
	}
}

func TestParseVersionErrors(t *testing.T) {
	for _, in := range []string{
		"", "x", ".", "1.", ".1", "1", "-1.2", "0.-1", "-0.6", "+0.6", "0.+6",
		"0.6.1", "0.x", "x.6", " 0.6", "0.6 ", "0,6", "0..6", "0.6\n",
		"1234567890.1", "0.99999999999999999999", "00.6", "0.06", "01.0",
	} {
		if v, err := ParseVersion(in); err == nil {
			t.Errorf("ParseVersion(%q) = %v, want an error", in, v)
		}
	}
}

func TestLess(t *testing.T) {
	for _, c := range []struct {
		a, b Version
		less bool
	}{
		{Version{0, 4}, Version{0, 5}, true},
		{Version{0, 6}, Version{0, 7}, true},
		{Version{0, 7}, Version{0, 6}, false},
		{Version{0, 6}, Version{0, 6}, false},
		{Version{0, 7}, Version{0, 10}, true}, // "0.10" < "0.7" as strings
		{Version{0, 10}, Version{0, 7}, false},
		{Version{0, 9}, Version{1, 0}, true},
		{Version{1, 0}, Version{0, 99}, false},
		{Version{1, 2}, Version{2, 1}, true},
	} {
		if got := c.a.Less(c.b); got != c.less {
			t.Errorf("%v.Less(%v) = %v, want %v", c.a, c.b, got, c.less)
		}
	}
}

func TestForAndKnown(t *testing.T) {
	for _, c := range []struct {
		v                       string
		tokenFirst, txAddr, usr bool
		known                   bool
	}{
		{"0.3", true, true, true, false},
		{"0.4", true, true, true, true},
		{"0.5", false, true, true, true},
		{"0.6", false, false, true, true},
		{"0.7", false, false, false, true},
		{"0.8", false, false, false, false},
		{"0.10", false, false, false, false},
		{"1.0", false, false, false, false},
	} {
		v, err := ParseVersion(c.v)
		if err != nil {
			t.Fatal(err)
		}
		want := Layout{Version: v, TokenFirst: c.tokenFirst, TxAddressBeforeResult: c.txAddr, AuthUserBeforeResult: c.usr}
		if got := For(v); got != want {
			t.Errorf("For(%v) = %+v, want %+v", v, got, want)
		}
		if got := Known(v); got != c.known {
			t.Errorf("Known(%v) = %v, want %v", v, got, c.known)
		}
	}
}

func TestNewestIsKnown(t *testing.T) {
	if !Known(Newest) {
		t.Errorf("Newest %v is not Known", Newest)
	}
	if For(Version{1, 0}).Version != (Version{1, 0}) {
		t.Error("For must keep the version it was given")
	}
}
