package conntrack

import "testing"

// The plan follows the last scan's bit counts: no split below the size
// where it pays, nor when the smaller part would be under a quarter of the
// table, nor with one CPU; the most even bit otherwise.
func TestAttributionSplitPlan(t *testing.T) {
	s := NewScanner()
	tl := func(scanned int, bits ...int) *bitCounts {
		c := &bitCounts{scanned: scanned}
		copy(c.bits[:], bits)
		return c
	}
	for _, tc := range []struct {
		name string
		last *bitCounts
		want uint32
	}{
		{"first pass", nil, 0},
		{"small table", tl(splitMinEntries-1, 0, 0, splitMinEntries/2, 0), 0},
		{"no even bit", tl(100000, 1000, 0, 90000, 90000), 0},
		{"assured half", tl(100000, 0, 0, 50000, 60000), 1 << 2},
		{"dst nat most even", tl(100000, 40000, 0, 70000, 70000), 1 << 5},
		{"a majority set is as even as a minority", tl(100000, 0, 80000, 0, 0), 0},
		{"three quarters set", tl(100000, 0, 74000, 0, 0), 1 << 4},
	} {
		if got := s.plan(tc.last); got != tc.want {
			t.Errorf("%s: split on %#x, want %#x", tc.name, got, tc.want)
		}
	}
	s.NoSplit = true
	if got := s.plan(tl(100000, 0, 0, 50000, 50000)); got != 0 {
		t.Errorf("with NoSplit: split on %#x", got)
	}
	s.NoSplit = false
	s.unsupported = true
	if got := s.plan(tl(100000, 0, 0, 50000, 50000)); got != 0 {
		t.Errorf("kernel without status filters: split on %#x", got)
	}
}
