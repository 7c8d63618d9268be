package kubeauth

import (
	"crypto/sha256"
	"net/http"
	"time"

	"k8s.io/apimachinery/pkg/util/cache"
)

// Digest identifies a token in the cache without keeping the token itself.
type Digest [sha256.Size]byte

// DigestOf returns the digest of a token.
func DigestOf(token string) Digest { return sha256.Sum256([]byte(token)) }

// Decision is the outcome of the reviews of one token.
type Decision struct {
	// Status is http.StatusOK (authenticated and allowed),
	// http.StatusUnauthorized (the TokenReview did not authenticate it) or
	// http.StatusForbidden (the SubjectAccessReview did not allow it).
	Status int
	// User is the authenticated user name ("" when unauthenticated), for logs.
	User string
}

// Allowed reports whether the decision lets the request through.
func (d Decision) Allowed() bool { return d.Status == http.StatusOK }

// Cache holds recent decisions by token digest: allowed ones for allowedTTL,
// denied ones (401 and 403) for deniedTTL, each kind in its own LRU of at
// most size entries, so that a flood of unknown tokens evicts only other
// denials, never the callers that are let in. A TTL of zero caches nothing
// of that kind. It is safe for concurrent use.
type Cache struct {
	allowed, denied       *cache.LRUExpireCache
	allowedTTL, deniedTTL time.Duration
}

// NewCache returns an empty cache. now is the clock (nil: time.Now).
func NewCache(size int, allowedTTL, deniedTTL time.Duration, now func() time.Time) *Cache {
	if now == nil {
		now = time.Now
	}
	size = max(size, 1)
	clk := clockFunc(now)
	return &Cache{
		allowed:    cache.NewLRUExpireCacheWithClock(size, clk),
		denied:     cache.NewLRUExpireCacheWithClock(size, clk),
		allowedTTL: allowedTTL,
		deniedTTL:  deniedTTL,
	}
}

type clockFunc func() time.Time

func (f clockFunc) Now() time.Time { return f() }

// Get returns the unexpired decision for a token, if any.
func (c *Cache) Get(key Digest) (Decision, bool) {
	if v, ok := c.allowed.Get(key); ok {
		return v.(Decision), true
	}
	if v, ok := c.denied.Get(key); ok {
		return v.(Decision), true
	}
	return Decision{}, false
}

// Add records a decision for its kind's TTL, replacing any earlier one.
func (c *Cache) Add(key Digest, d Decision) {
	if d.Allowed() {
		c.denied.Remove(key)
		if c.allowedTTL > 0 {
			c.allowed.Add(key, d, c.allowedTTL)
		}
		return
	}
	c.allowed.Remove(key)
	if c.deniedTTL > 0 {
		c.denied.Add(key, d, c.deniedTTL)
	}
}

// Len returns the number of unexpired decisions of each kind.
func (c *Cache) Len() (allowed, denied int) {
	return len(c.allowed.Keys()), len(c.denied.Keys())
}
