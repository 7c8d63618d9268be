package source

import (
	"errors"
	"io/fs"
	"testing"
)

func TestAbsentf(t *testing.T) {
	err := Absentf("table absent: %w", fs.ErrNotExist)
	if !errors.Is(err, ErrAbsent) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%v: matches ErrAbsent %v, its cause %v; want both", err, errors.Is(err, ErrAbsent), errors.Is(err, fs.ErrNotExist))
	}
	if got, want := err.Error(), "table absent: file does not exist"; got != want {
		t.Errorf("text %q, want %q", got, want)
	}
	if errors.Is(errors.New("other"), ErrAbsent) {
		t.Error("a plain error matches ErrAbsent")
	}
}
