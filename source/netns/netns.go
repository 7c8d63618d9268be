// Package netns is the one place netinspect enters, names and identifies
// network namespaces: the readers under source/ read a Target (the caller's
// own namespace, or one given by an open file descriptor), and the test
// harnesses under test/ use the same helpers.
//
// A socket belongs for life to the namespace of the thread that created it,
// so reading another namespace never moves a goroutine's thread for longer
// than the creation of a socket: Do runs a function on a locked OS thread
// inside the namespace and moves the thread back afterwards.
package netns

import (
	"fmt"
	"os"
	"runtime"

	"golang.org/x/sys/unix"
)

// ID identifies a namespace file by its nsfs device and inode, as ip-netns
// and lsns do: two paths name the same namespace when their IDs are equal.
type ID struct{ Dev, Ino uint64 }

// Stat returns the ID of the namespace file at path.
func Stat(path string) (ID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return ID{}, err
	}
	return ID{uint64(st.Dev), st.Ino}, nil
}

// Fstat returns the ID of the namespace open as fd.
func Fstat(fd int) (ID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return ID{}, err
	}
	return ID{uint64(st.Dev), st.Ino}, nil
}

// Self returns the ID of the calling thread's network namespace.
func Self() (ID, error) { return Stat("/proc/thread-self/ns/net") }

// File is a namespace file opened read-only; Close releases it.
type File struct{ fd int }

// Open opens the namespace file at path (a bind mount under /run/netns or a
// /proc/<pid>/ns/net), with close-on-exec.
func Open(path string) (*File, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	return &File{fd: fd}, nil
}

// FD is the file's descriptor, valid until Close.
func (f *File) FD() int { return f.fd }

// ID is the namespace's identity.
func (f *File) ID() (ID, error) { return Fstat(f.fd) }

// Close closes the file.
func (f *File) Close() error { return unix.Close(f.fd) }

// Target names the network namespace a reader works in. The zero Target is
// the caller's own namespace; FromFD names another one.
type Target struct {
	fd int
}

// FromFD names the namespace open as fd, which must stay open while the
// Target is used. fd 0 names the caller's own namespace.
func FromFD(fd int) Target { return Target{fd: fd} }

// IsOwn reports whether t is the caller's own namespace.
func (t Target) IsOwn() bool { return t.fd == 0 }

// FD is the namespace's file descriptor, or 0 for the caller's own, which is
// what mdlayher/netlink's Config.NetNS, google/nftables' WithNetNSFd and
// vishvananda/netlink's NewHandleAt take.
func (t Target) FD() int { return t.fd }

// Path is a path that names the namespace to another process (nsenter
// --net=), or "" for the caller's own.
func (t Target) Path() string {
	if t.fd == 0 {
		return ""
	}
	return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), t.fd)
}

// Do runs fn inside t: for the caller's own namespace directly, otherwise on
// a goroutine whose locked OS thread has entered t, so the sockets fn creates
// belong to t. The thread goes back to its own namespace afterwards; if it
// cannot, it stays locked and the Go runtime discards it with its goroutine.
func (t Target) Do(fn func() error) error {
	if t.fd == 0 {
		return fn()
	}
	return do(t.Path(), func() (int, func(), error) { return t.fd, func() {}, nil }, fn)
}

// Do runs fn on a locked OS thread inside the namespace at path, as
// Target.Do does for a Target.
func Do(path string, fn func() error) error {
	return do(path, func() (int, func(), error) {
		f, err := Open(path)
		if err != nil {
			return 0, nil, err
		}
		return f.FD(), func() { f.Close() }, nil
	}, fn)
}

func do(name string, target func() (fd int, release func(), err error), fn func() error) error {
	var ferr error
	err := visit(1, func(int) (string, int, func(), error) {
		fd, release, err := target()
		return name, fd, release, err
	}, func(_ int, err error) {
		if err == nil {
			err = fn()
		}
		ferr = err
	})
	if err != nil {
		return err
	}
	return ferr
}

// Visit enters the namespaces at paths one after the other on one locked
// OS thread and calls fn(i, nil) inside path i, so that the sockets fn
// creates belong to it: for a caller that reads many namespaces at once,
// one thread and one return trip instead of one per namespace. A path that
// cannot be opened or entered, or that no longer names the namespace
// want[i] (when want is given and want[i] is not zero), is reported as
// fn(i, err) without entering it. The thread goes back to its own
// namespace afterwards; if it cannot, it stays locked and the Go runtime
// discards it with its goroutine, and Visit returns that error.
func Visit(paths []string, want []ID, fn func(i int, err error)) error {
	return visit(len(paths), func(i int) (string, int, func(), error) {
		f, err := Open(paths[i])
		if err != nil {
			return paths[i], 0, nil, err
		}
		if i < len(want) && want[i] != (ID{}) {
			if got, err := f.ID(); err != nil || got != want[i] {
				f.Close()
				return paths[i], 0, nil, fmt.Errorf("%s no longer names the network namespace it did", paths[i])
			}
		}
		return paths[i], f.FD(), func() { f.Close() }, nil
	}, fn)
}

// visit is Visit over n namespaces that enter(i) names, opens (an fd and
// the function that releases it) or fails to.
func visit(n int, enter func(i int) (name string, fd int, release func(), err error), fn func(i int, err error)) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		own, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open own network namespace: %w", err)
			return
		}
		defer own.Close()
		moved := false
		for i := range n {
			name, fd, release, err := enter(i)
			if err != nil {
				fn(i, err)
				continue
			}
			err = unix.Setns(fd, unix.CLONE_NEWNET)
			release()
			if err != nil {
				fn(i, fmt.Errorf("enter network namespace %s (needs CAP_SYS_ADMIN): %w", name, err))
				continue
			}
			moved = true
			fn(i, nil)
		}
		if moved {
			if err := unix.Setns(int(own.Fd()), unix.CLONE_NEWNET); err != nil {
				errc <- fmt.Errorf("return to own network namespace: %w", err)
				return // the thread stays locked and is discarded
			}
		}
		runtime.UnlockOSThread()
		errc <- nil
	}()
	return <-errc
}
