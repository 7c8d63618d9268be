package natfill

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// DNATService is a service address and port whose flows an nft DNAT rule
// sends to backends, each getting a known number of flows.
type DNATService struct {
	Addr netip.Addr
	Port uint16
	// Proto is unix.IPPROTO_UDP (0 means UDP) or unix.IPPROTO_TCP.
	Proto    uint8
	Backends []DNATBackend
}

// DNATBackend is one DNAT target of a service and how many flows it gets.
type DNATBackend struct {
	Addr netip.Addr
	// Port is the target port; 0 keeps the service port.
	Port  uint16
	Flows int
}

// DNATKey is what a stale-entry count groups by: the protocol, the
// original destination (the service) and the reply source (the backend).
type DNATKey struct {
	Proto             uint8
	OrigDst, ReplySrc netip.AddrPort
}

// String formats the key as `conntrack -L` would show it.
func (k DNATKey) String() string {
	return fmt.Sprintf("%s %s -> %s", ProtoName(k.Proto), k.OrigDst, k.ReplySrc)
}

// DNATTimeout is the conntrack timeout FillDNAT sets in its namespace for
// unreplied UDP and TCP SYN_SENT entries, so the table stays as filled for
// the test: the flows never get an answer.
const DNATTimeout = time.Hour

// DNATFiller fills the conntrack table of one namespace with DNATed flows.
type DNATFiller struct {
	t  testing.TB
	ns *netns.NS
	// next client addresses to hand out, per family
	next4, next6 netip.Addr
	rule         int
}

// Addresses the filler uses in its namespace: clients are counted up from
// 10.250.0.1 and fd00:250::1, and every service and backend address is
// routed to a gateway that never answers, through the veth nf0.
var (
	dnatGateway4 = netip.MustParseAddr("10.250.255.254")
	dnatGateway6 = netip.MustParseAddr("fd00:250::ffff")
)

// dnatPortsPerClient is how many flows one client address carries: its
// source ports 1024-65535.
const dnatPortsPerClient = 65535 - 1024 + 1

// NewDNATFiller prepares ns: a veth pair nf0/nf1 with permanent gateway
// neighbours (datagrams leave at once, without waiting on ARP or ND), nft
// tables ip natfill and ip6 natfill with an output nat chain, and the
// DNATTimeout. It changes nothing outside ns.
func NewDNATFiller(t testing.TB, ns *netns.NS) *DNATFiller {
	t.Helper()
	testenv.RequireCommand(t, "nft")
	ns.MustRun("ip", "link", "add", "nf0", "type", "veth", "peer", "name", "nf1")
	for _, dev := range []string{"nf0", "nf1"} {
		// No IPv6 link-local address: the namespace sends nothing but the
		// test's flows.
		ns.MustRun("ip", "link", "set", dev, "addrgenmode", "none")
		ns.MustRun("ip", "link", "set", dev, "up")
	}
	for _, gw := range []netip.Addr{dnatGateway4, dnatGateway6} {
		ns.MustRun("ip", "neigh", "replace", gw.String(), "lladdr", "02:00:00:00:00:01", "dev", "nf0", "nud", "permanent")
	}
	for _, s := range []string{"nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream", "nf_conntrack_tcp_timeout_syn_sent"} {
		ns.SetSysctl("net.netfilter."+s, fmt.Sprint(int(DNATTimeout.Seconds())))
	}
	d := &DNATFiller{t: t, ns: ns, next4: netip.MustParseAddr("10.250.0.1"), next6: netip.MustParseAddr("fd00:250::1")}
	d.nft("add table ip natfill\n" +
		"add chain ip natfill out { type nat hook output priority -100 ; }\n" +
		"add table ip6 natfill\n" +
		"add chain ip6 natfill out { type nat hook output priority -100 ; }\n")
	return d
}

// FillDNAT is NewDNATFiller(t, ns).Fill(services).
func FillDNAT(t testing.TB, ns *netns.NS, services []DNATService) DNATTable {
	t.Helper()
	return NewDNATFiller(t, ns).Fill(services)
}

// DNATTable is what Fill created.
type DNATTable struct {
	// Counts is the number of entries per key.
	Counts map[DNATKey]int
	// Total is the number of entries created.
	Total int
}

// Fill creates the flows of services: for each backend, Flows flows from
// client addresses of its own (up to 64,512 per address, source ports
// counted up from 1024) to the service, which a rule matching those
// clients DNATs to the backend. UDP flows are one datagram each, TCP flows
// one SYN (the socket is closed before any answer, which never comes).
// Fill may be called again to add more; each call adds its own clients and
// rules.
func (d *DNATFiller) Fill(services []DNATService) DNATTable {
	d.t.Helper()
	out := DNATTable{Counts: map[DNATKey]int{}}
	type batch struct {
		proto   uint8
		clients []netip.Addr
		flows   int
		dst     netip.AddrPort
	}
	var (
		batches []batch
		setup   strings.Builder // ip -batch
		rules   strings.Builder // nft -f
	)
	routed := map[netip.Addr]bool{}
	route := func(a netip.Addr) {
		if routed[a] {
			return
		}
		routed[a] = true
		gw, bits := dnatGateway4, 32
		if a.Is6() {
			gw, bits = dnatGateway6, 128
		}
		fmt.Fprintf(&setup, "route replace %s/%d via %s dev nf0 onlink\n", a, bits, gw)
	}
	for _, svc := range services {
		proto := svc.Proto
		if proto == 0 {
			proto = unix.IPPROTO_UDP
		}
		if proto != unix.IPPROTO_UDP && proto != unix.IPPROTO_TCP {
			d.t.Fatalf("natfill: protocol %d: only udp and tcp", proto)
		}
		route(svc.Addr)
		for _, be := range svc.Backends {
			if be.Addr.Is4() != svc.Addr.Is4() {
				d.t.Fatalf("natfill: backend %s of service %s is of another family", be.Addr, svc.Addr)
			}
			port := be.Port
			if port == 0 {
				port = svc.Port
			}
			route(be.Addr)
			var clients []netip.Addr
			for n := 0; n < be.Flows; n += dnatPortsPerClient {
				c := d.client(svc.Addr.Is4())
				clients = append(clients, c)
				if c.Is4() {
					fmt.Fprintf(&setup, "addr add %s/32 dev nf0\n", c)
				} else {
					fmt.Fprintf(&setup, "addr add %s/128 dev nf0 nodad\n", c)
				}
			}
			if len(clients) == 0 {
				continue
			}
			fam, l3, target := "ip", "ip", fmt.Sprintf("%s:%d", be.Addr, port)
			if be.Addr.Is6() {
				fam, l3, target = "ip6", "ip6", fmt.Sprintf("[%s]:%d", be.Addr, port)
			}
			set := make([]string, len(clients))
			for i, c := range clients {
				set[i] = c.String()
			}
			fmt.Fprintf(&rules, "add rule %s natfill out %s saddr { %s } %s daddr %s %s dport %d dnat to %s\n",
				fam, l3, strings.Join(set, ", "), l3, svc.Addr, ProtoName(proto), svc.Port, target)
			key := DNATKey{Proto: proto, OrigDst: netip.AddrPortFrom(svc.Addr, svc.Port), ReplySrc: netip.AddrPortFrom(be.Addr, port)}
			out.Counts[key] += be.Flows
			out.Total += be.Flows
			batches = append(batches, batch{proto: proto, clients: clients, flows: be.Flows, dst: key.OrigDst})
		}
	}
	if setup.Len() > 0 {
		d.ns.MustRun("bash", "-c", "ip -batch - <<'EOF'\n"+setup.String()+"EOF")
	}
	if rules.Len() > 0 {
		d.nft(rules.String())
	}
	err := d.ns.Do(func() error {
		for _, b := range batches {
			for i := 0; i < b.flows; i++ {
				src := netip.AddrPortFrom(b.clients[i/dnatPortsPerClient], uint16(1024+i%dnatPortsPerClient))
				if err := sendFlow(b.proto, src, b.dst); err != nil {
					return fmt.Errorf("flow %d of %d to %s from %s: %w", i+1, b.flows, b.dst, src, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		d.t.Fatalf("natfill: in netns %s: %v", d.ns.Name, err)
	}
	return out
}

func (d *DNATFiller) client(v4 bool) netip.Addr {
	if v4 {
		c := d.next4
		d.next4 = c.Next()
		return c
	}
	c := d.next6
	d.next6 = c.Next()
	return c
}

func (d *DNATFiller) nft(script string) {
	d.t.Helper()
	d.rule++
	p := filepath.Join(d.t.TempDir(), fmt.Sprintf("natfill-%d.nft", d.rule))
	if err := os.WriteFile(p, []byte(script), 0o600); err != nil {
		d.t.Fatal(err)
	}
	d.ns.MustRun("nft", "-f", p)
}

// ErrTableFull is returned when the kernel drops a flow's first packet
// because the namespace's table is at nf_conntrack_max (sendto fails with
// EPERM, the verdict of a netfilter drop).
var ErrTableFull = errors.New("conntrack table full (or the packet was dropped by a rule)")

// sendFlow opens a socket bound to src, sends one datagram (UDP) or one
// SYN (TCP, non-blocking connect) to dst, and closes it.
func sendFlow(proto uint8, src, dst netip.AddrPort) error {
	af, typ := unix.AF_INET, unix.SOCK_DGRAM
	if src.Addr().Is6() {
		af = unix.AF_INET6
	}
	if proto == unix.IPPROTO_TCP {
		typ = unix.SOCK_STREAM
	}
	fd, err := unix.Socket(af, typ|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, sockaddr(src)); err != nil {
		return fmt.Errorf("bind: %w", err)
	}
	if proto == unix.IPPROTO_TCP {
		err = unix.Connect(fd, sockaddr(dst))
		if errors.Is(err, unix.EINPROGRESS) {
			err = nil
		}
	} else {
		err = unix.Sendto(fd, []byte{'x'}, 0, sockaddr(dst))
	}
	if errors.Is(err, unix.EPERM) {
		return ErrTableFull
	}
	return err
}

func sockaddr(ap netip.AddrPort) unix.Sockaddr {
	if ap.Addr().Is4() {
		return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
}

// DNATCounts counts entries by DNATKey: those whose reply source differs
// from their original destination, as DNAT leaves them. Pass it
// List(t, ns, DstNAT).
func DNATCounts(entries []Entry) map[DNATKey]int {
	out := map[DNATKey]int{}
	for _, e := range entries {
		if e.Orig.Dst == e.Reply.Src && e.Orig.DstPort == e.Reply.SrcPort {
			continue
		}
		out[DNATKey{Proto: e.Proto, OrigDst: netip.AddrPortFrom(e.Orig.Dst, e.Orig.DstPort),
			ReplySrc: netip.AddrPortFrom(e.Reply.Src, e.Reply.SrcPort)}]++
	}
	return out
}
