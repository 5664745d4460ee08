package gateway

import "testing"

func TestBufPoolClasses(t *testing.T) {
	for _, tc := range []struct{ n, class int }{
		{0, 0}, {1, 0}, {4096, 0}, {4097, 1}, {8192, 1}, {65536, 4}, {1 << 20, 8}, {1<<20 + 1, -1},
	} {
		if got := classOf(tc.n); got != tc.class {
			t.Errorf("classOf(%d) = %d, want %d", tc.n, got, tc.class)
		}
	}
}

func TestGrowBufKeepsContent(t *testing.T) {
	b := getBuf(10)
	if cap(b) != 4096 || len(b) != 0 {
		t.Fatalf("getBuf(10): len %d cap %d, want 0 and 4096", len(b), cap(b))
	}
	want := []byte{}
	for i := 0; i < 3000; i++ {
		line := []byte("line of the message\n")
		b = growBuf(b, len(line))
		b = append(b, line...)
		want = append(want, line...)
	}
	if string(b) != string(want) {
		t.Fatal("growBuf lost or changed bytes")
	}
	if cap(b) != 65536 {
		t.Errorf("cap after 60000 bytes = %d, want the 64 KiB class", cap(b))
	}
	putBuf(b)
	big := getBuf(2 << 20)
	if cap(big) < 2<<20 {
		t.Errorf("getBuf(2 MiB) has cap %d", cap(big))
	}
	putBuf(big) // not a class size: dropped, must not panic
}
