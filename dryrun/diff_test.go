package dryrun

import (
	"strings"
	"testing"
)

func TestUnifiedDiff(t *testing.T) {
	lines := func(s string) [][]byte {
		var out [][]byte
		for _, l := range strings.Split(s, "\n") {
			out = append(out, []byte(l))
		}
		return out
	}
	if d := unifiedDiff(lines("a\nb"), lines("a\nb"), "x", "y"); d != "" {
		t.Errorf("equal: %q", d)
	}
	a := lines("1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12")
	b := lines("1\n2\n3\n4\nfive\n6\n7\n8\n9\n10\n11\n12\n13")
	want := "--- x\n+++ y\n@@ -2,7 +2,7 @@\n 2\n 3\n 4\n-5\n+five\n 6\n 7\n 8\n@@ -10,3 +10,4 @@\n 10\n 11\n 12\n+13\n"
	if d := unifiedDiff(a, b, "x", "y"); d != want {
		t.Errorf("diff\n%s\nwant\n%s", d, want)
	}
	if d := unifiedDiff(nil, lines("new"), "x", "y"); d != "--- x\n+++ y\n@@ -0,0 +1 @@\n+new\n" {
		t.Errorf("from empty: %q", d)
	}
}
