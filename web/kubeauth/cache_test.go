package kubeauth

import (
	"fmt"
	"net/http"
	"testing"
	"time"
)

// fakeClock is a settable clock for the cache's TTLs.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

var (
	allowedDecision   = Decision{Status: http.StatusOK, User: "system:serviceaccount:monitoring:prometheus"}
	forbiddenDecision = Decision{Status: http.StatusForbidden, User: "system:serviceaccount:x:y"}
	unauthenticated   = Decision{Status: http.StatusUnauthorized}
)

func TestCacheKeepsEachKindForItsTTL(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	c := NewCache(8, time.Minute, 10*time.Second, clk.now)
	a, f, u := DigestOf("allowed"), DigestOf("forbidden"), DigestOf("unknown")
	c.Add(a, allowedDecision)
	c.Add(f, forbiddenDecision)
	c.Add(u, unauthenticated)

	check := func(when string, key Digest, want Decision, wantOK bool) {
		t.Helper()
		got, ok := c.Get(key)
		if ok != wantOK || got != want {
			t.Errorf("%s: Get = %+v, %v; want %+v, %v", when, got, ok, want, wantOK)
		}
	}
	check("at once", a, allowedDecision, true)
	check("at once", f, forbiddenDecision, true)
	check("at once", u, unauthenticated, true)
	if al, de := c.Len(); al != 1 || de != 2 {
		t.Errorf("Len = %d, %d; want 1, 2", al, de)
	}

	clk.advance(10 * time.Second) // exactly the denied TTL: still valid
	check("at the denied TTL", f, forbiddenDecision, true)
	clk.advance(time.Nanosecond)
	check("past the denied TTL", f, Decision{}, false)
	check("past the denied TTL", u, Decision{}, false)
	check("past the denied TTL", a, allowedDecision, true)

	clk.advance(50 * time.Second)
	check("past the allowed TTL", a, Decision{}, false)
	if al, de := c.Len(); al != 0 || de != 0 {
		t.Errorf("Len after expiry = %d, %d; want 0, 0", al, de)
	}
}

func TestCacheNewDecisionReplacesTheOther(t *testing.T) {
	c := NewCache(8, time.Minute, time.Minute, nil)
	k := DigestOf("tok")
	c.Add(k, allowedDecision)
	c.Add(k, forbiddenDecision)
	if got, _ := c.Get(k); got != forbiddenDecision {
		t.Errorf("after a denial: %+v", got)
	}
	c.Add(k, allowedDecision)
	if got, _ := c.Get(k); got != allowedDecision {
		t.Errorf("after an allow: %+v", got)
	}
	if al, de := c.Len(); al != 1 || de != 0 {
		t.Errorf("Len = %d, %d; want 1, 0", al, de)
	}
}

// TestCacheDenialFloodKeepsAllowedCallers fills the denied LRU far past its
// size: the allowed caller stays cached and the denied side stays bounded.
func TestCacheDenialFloodKeepsAllowedCallers(t *testing.T) {
	const size = 16
	c := NewCache(size, time.Minute, time.Minute, nil)
	prom := DigestOf("prometheus")
	c.Add(prom, allowedDecision)
	for i := range 100 * size {
		c.Add(DigestOf(fmt.Sprint("junk-", i)), unauthenticated)
	}
	if got, ok := c.Get(prom); !ok || got != allowedDecision {
		t.Errorf("allowed caller evicted by a denial flood: %+v, %v", got, ok)
	}
	if al, de := c.Len(); al != 1 || de != size {
		t.Errorf("Len = %d, %d; want 1, %d", al, de, size)
	}
	// The newest denials are the ones kept.
	if _, ok := c.Get(DigestOf(fmt.Sprint("junk-", 100*size-1))); !ok {
		t.Error("newest denial not cached")
	}
	if _, ok := c.Get(DigestOf("junk-0")); ok {
		t.Error("oldest denial still cached past the size")
	}
}

func TestCacheZeroTTLCachesNothingOfThatKind(t *testing.T) {
	c := NewCache(8, time.Minute, 0, nil)
	c.Add(DigestOf("u"), unauthenticated)
	if _, ok := c.Get(DigestOf("u")); ok {
		t.Error("denial cached with a zero denied TTL")
	}
	c.Add(DigestOf("a"), allowedDecision)
	if _, ok := c.Get(DigestOf("a")); !ok {
		t.Error("allow not cached")
	}
}
