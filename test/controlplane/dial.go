package controlplane

import (
	"context"
	"io"
	"net"
	"sync"

	"github.com/netinspect/netinspect/source/netns"
)

// DialerIn returns a dial function whose connections are made from inside
// the network namespace at nsPath. Set it as rest.Config.Dial to reach an
// API server listening on that namespace's loopback from the test process.
func DialerIn(nsPath string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := netns.Do(nsPath, func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
}

// ListenIn listens on addr inside the network namespace at nsPath.
func ListenIn(nsPath, network, addr string) (net.Listener, error) {
	var l net.Listener
	err := netns.Do(nsPath, func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	return l, err
}

// forwarder copies TCP connections accepted in one namespace to an address
// dialed in another. It is how a process in a node's namespace (kube-proxy,
// the exporter) reaches the API server on the control plane's loopback.
type forwarder struct {
	l    net.Listener
	dial func(ctx context.Context, network, addr string) (net.Conn, error)
	to   string
	wg   sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

func startForwarder(l net.Listener, dial func(ctx context.Context, network, addr string) (net.Conn, error), to string) *forwarder {
	f := &forwarder{l: l, dial: dial, to: to, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go f.serve()
	return f
}

func (f *forwarder) track(c net.Conn, add bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		return false
	}
	if add {
		f.conns[c] = struct{}{}
	} else {
		delete(f.conns, c)
	}
	return true
}

func (f *forwarder) serve() {
	defer f.wg.Done()
	for {
		in, err := f.l.Accept()
		if err != nil {
			return
		}
		if !f.track(in, true) {
			in.Close()
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer f.track(in, false)
			defer in.Close()
			out, err := f.dial(context.Background(), "tcp", f.to)
			if err != nil {
				return
			}
			f.track(out, true)
			defer f.track(out, false)
			defer out.Close()
			done := make(chan struct{}, 2)
			go func() { io.Copy(out, in); out.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
			go func() { io.Copy(in, out); in.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
			<-done
			<-done
		}()
	}
}

func (f *forwarder) Close() {
	f.l.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
}
