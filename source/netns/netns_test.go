package netns_test

import (
	"errors"
	"io/fs"
	"testing"

	"github.com/netinspect/netinspect/source/netns"
	testns "github.com/netinspect/netinspect/test/netns"
)

func TestDoEntersAndLeaves(t *testing.T) {
	ns := testns.New(t, "selftest")
	want, err := netns.Stat(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	own, err := netns.Self()
	if err != nil {
		t.Fatal(err)
	}
	if own == want {
		t.Fatal("the test namespace has the caller's identity")
	}
	f, err := netns.Open(ns.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if id, err := f.ID(); err != nil || id != want {
		t.Fatalf("ID of the open file = %v, %v; want %v", id, err, want)
	}
	for name, run := range map[string]func(func() error) error{
		"path":   func(fn func() error) error { return netns.Do(ns.Path(), fn) },
		"target": netns.FromFD(f.FD()).Do,
	} {
		var inside netns.ID
		if err := run(func() error {
			var err error
			inside, err = netns.Self()
			return err
		}); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if inside != want {
			t.Errorf("%s: fn ran in %v, want %v", name, inside, want)
		}
	}
	if after, err := netns.Self(); err != nil || after != own {
		t.Errorf("caller's namespace after Do = %v, %v; want %v", after, err, own)
	}
	if p := netns.FromFD(f.FD()).Path(); p == "" {
		t.Error("no path for a namespace given by fd")
	} else if id, err := netns.Stat(p); err != nil || id != want {
		t.Errorf("Stat(%s) = %v, %v; want %v", p, id, err, want)
	}
}

func TestOwnTarget(t *testing.T) {
	var own netns.Target
	if !own.IsOwn() || own.FD() != 0 || own.Path() != "" {
		t.Fatalf("zero Target: own %v fd %d path %q", own.IsOwn(), own.FD(), own.Path())
	}
	ran := false
	if err := own.Do(func() error { ran = true; return nil }); err != nil || !ran {
		t.Fatalf("Do in the own namespace: ran %v, %v", ran, err)
	}
}

func TestDoReportsAMissingNamespace(t *testing.T) {
	missing := t.TempDir() + "/none"
	if err := netns.Do(missing, func() error { return nil }); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Do(%s) = %v, want a not-exist error", missing, err)
	}
}

func TestVisitEntersEachAndReportsWhatItCannot(t *testing.T) {
	a, b := testns.New(t, "visit-a"), testns.New(t, "visit-b")
	idA, _ := netns.Stat(a.Path())
	idB, _ := netns.Stat(b.Path())
	own, _ := netns.Self()
	paths := []string{a.Path(), "/run/netns/no-such-namespace", b.Path(), a.Path()}
	want := []netns.ID{idA, {}, idB, idB} // the last names a, not b
	var inside []netns.ID
	var errs []error
	if err := netns.Visit(paths, want, func(i int, err error) {
		errs = append(errs, err)
		id, _ := netns.Self()
		inside = append(inside, id)
	}); err != nil {
		t.Fatal(err)
	}
	if len(errs) != 4 || errs[0] != nil || !errors.Is(errs[1], fs.ErrNotExist) || errs[2] != nil || errs[3] == nil {
		t.Fatalf("errors %v, want nil, not-exist, nil, changed", errs)
	}
	if inside[0] != idA || inside[2] != idB {
		t.Errorf("ran in %v and %v, want %v and %v", inside[0], inside[2], idA, idB)
	}
	if after, _ := netns.Self(); after != own {
		t.Errorf("caller's namespace after Visit = %v, want %v", after, own)
	}
}
