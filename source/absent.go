// Package source holds what the kernel readers under source/ share: the
// error a reader returns when the kernel feature it reads is absent on the
// node. Each reader is its own package (source/conntrack, source/ipvs, ...):
// Read functions do the I/O and return plain Go structs, parsers work on
// bytes and are unit tested and fuzzed. Readers import neither
// client_golang nor the Kubernetes packages; the collectors join and emit.
package source

import (
	"errors"
	"fmt"
)

// ErrAbsent is matched (errors.Is) by the errors of readers whose kernel
// feature is absent on this node: a module not loaded, a netlink family
// missing. A collector reports such a source as having no data instead of
// failing.
var ErrAbsent = errors.New("kernel feature absent")

// Absentf returns an error that says why a source is absent, in the words
// of format (which may wrap a cause with %w), and matches ErrAbsent. Its
// text is the reason alone.
func Absentf(format string, args ...any) error {
	return &absentError{err: fmt.Errorf(format, args...)}
}

type absentError struct{ err error }

func (e *absentError) Error() string        { return e.err.Error() }
func (e *absentError) Unwrap() error        { return e.err }
func (e *absentError) Is(target error) bool { return target == ErrAbsent }
