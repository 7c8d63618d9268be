package natfill

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// Rule engines NewMasquerade can write the masquerade rule with.
const (
	RuleNFT      = "nft"
	RuleIPTables = "iptables" // iptables and ip6tables, whichever backend they use
)

// MasqueradeSpec describes the topology NewMasquerade builds.
type MasqueradeSpec struct {
	// Clients is the number of client source addresses (each with an
	// IPv4 and an IPv6 address) in the clients namespace; 0 means 3.
	Clients int
	// Rule is RuleNFT (default) or RuleIPTables.
	Rule string
	// ToPorts, when set, is the rule's port range (nft "masquerade to
	// :lo-hi", iptables --to-ports lo-hi); otherwise the kernel picks.
	ToPorts [2]uint16
	// RandomFully adds nft "fully-random" / iptables --random-fully, as
	// kube-proxy's and most CNI plugins' masquerade rules have.
	RandomFully bool
}

// Masquerade is a small routed network: clients -> router -> server. The
// router masquerades what it forwards to the server behind its own wan
// address; the server has no route back to the clients, so only
// masqueraded connections get answers.
type Masquerade struct {
	// Clients holds the client addresses; Router the NAT and its conntrack
	// table; Server the listeners.
	Clients, Router, Server *netns.NS
	// ClientAddrs are the clients' source addresses, IPv4 then IPv6.
	ClientAddrs []netip.Addr
	// RouterWAN4/6 are the translated source addresses.
	RouterWAN4, RouterWAN6 netip.Addr
	// Server4/6 are the server's addresses; TCPPort and UDPPort its ports.
	Server4, Server6 netip.Addr
	TCPPort, UDPPort uint16

	t     testing.TB
	mu    sync.Mutex
	conns []io.Closer
	peers map[uint8]map[netip.AddrPort]bool // what the server saw, by protocol
}

// Fixed addresses of the topology.
var (
	masqLAN4, masqLAN6 = netip.MustParseAddr("10.77.0.1"), netip.MustParseAddr("fd00:77::1")
	masqWAN4, masqWAN6 = netip.MustParseAddr("10.78.0.1"), netip.MustParseAddr("fd00:78::1")
	masqSrv4, masqSrv6 = netip.MustParseAddr("10.78.0.2"), netip.MustParseAddr("fd00:78::2")
)

// NewMasquerade builds the three namespaces, the masquerade rule on the
// router's wan0 (both families), the server's TCP listener (which holds
// accepted connections open) and UDP echo, and removes it all when the test
// ends.
func NewMasquerade(t testing.TB, spec MasqueradeSpec) *Masquerade {
	t.Helper()
	testenv.RequireCommand(t, "bash")
	if spec.Clients == 0 {
		spec.Clients = 3
	}
	if spec.Clients > 200 {
		t.Fatalf("natfill: %d clients, at most 200", spec.Clients)
	}
	m := &Masquerade{
		Clients: netns.New(t, "masq-c"), Router: netns.New(t, "masq-r"), Server: netns.New(t, "masq-s"),
		RouterWAN4: masqWAN4, RouterWAN6: masqWAN6, Server4: masqSrv4, Server6: masqSrv6,
		TCPPort: 8080, UDPPort: 5353,
		t: t, peers: map[uint8]map[netip.AddrPort]bool{unix.IPPROTO_TCP: {}, unix.IPPROTO_UDP: {}},
	}
	t.Cleanup(m.closeAll) // before the namespaces go
	m.link(m.Clients, "c0", m.Router, "lan0")
	m.link(m.Router, "wan0", m.Server, "s0")

	var c strings.Builder
	for i := 0; i < spec.Clients; i++ {
		a4 := netip.AddrFrom4([4]byte{10, 77, 0, byte(10 + i)})
		fmt.Fprintf(&c, "addr add %s/24 dev c0\n", a4)
		m.ClientAddrs = append(m.ClientAddrs, a4)
	}
	for i := 0; i < spec.Clients; i++ {
		a6 := netip.MustParseAddr(fmt.Sprintf("fd00:77::%x", 0x10+i))
		fmt.Fprintf(&c, "addr add %s/64 dev c0 nodad\n", a6)
		m.ClientAddrs = append(m.ClientAddrs, a6)
	}
	fmt.Fprintf(&c, "route add default via %s\nroute add default via %s\n", masqLAN4, masqLAN6)
	batch(t, m.Clients, c.String())
	batch(t, m.Router, fmt.Sprintf("addr add %s/24 dev lan0\naddr add %s/64 dev lan0 nodad\naddr add %s/24 dev wan0\naddr add %s/64 dev wan0 nodad\n",
		masqLAN4, masqLAN6, masqWAN4, masqWAN6))
	batch(t, m.Server, fmt.Sprintf("addr add %s/24 dev s0\naddr add %s/64 dev s0 nodad\n", masqSrv4, masqSrv6))
	m.Router.SetSysctl("net.ipv4.ip_forward", "1")
	m.Router.SetSysctl("net.ipv6.conf.all.forwarding", "1")
	// Keep the router's entries for the length of a test whatever they
	// are waiting for.
	for _, s := range []string{"nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream", "nf_conntrack_tcp_timeout_syn_sent"} {
		m.Router.SetSysctl("net.netfilter."+s, "3600")
	}
	m.writeRule(spec)
	m.serve()
	return m
}

func (m *Masquerade) link(a *netns.NS, aName string, b *netns.NS, bName string) {
	m.t.Helper()
	a.MustRun("ip", "link", "add", aName, "type", "veth", "peer", "name", bName, "netns", b.Name)
	a.MustRun("ip", "link", "set", aName, "up")
	b.MustRun("ip", "link", "set", bName, "up")
}

func batch(t testing.TB, ns *netns.NS, cmds string) {
	t.Helper()
	ns.MustRun("bash", "-c", "ip -batch - <<'EOF'\n"+cmds+"EOF")
}

func (m *Masquerade) writeRule(spec MasqueradeSpec) {
	m.t.Helper()
	switch spec.Rule {
	case "", RuleNFT:
		testenv.RequireCommand(m.t, "nft")
		match, opts := "", ""
		if spec.ToPorts[0] != 0 {
			// A port mapping needs a transport protocol match.
			match = " meta l4proto { tcp, udp }"
			opts += fmt.Sprintf(" to :%d-%d", spec.ToPorts[0], spec.ToPorts[1])
		}
		if spec.RandomFully {
			opts += " fully-random"
		}
		var s strings.Builder
		for _, fam := range []string{"ip", "ip6"} {
			fmt.Fprintf(&s, "add table %s natfill\nadd chain %s natfill post { type nat hook postrouting priority 100 ; }\n", fam, fam)
			fmt.Fprintf(&s, "add rule %s natfill post oifname \"wan0\"%s masquerade%s\n", fam, match, opts)
		}
		p := filepath.Join(m.t.TempDir(), "masquerade.nft")
		if err := os.WriteFile(p, []byte(s.String()), 0o600); err != nil {
			m.t.Fatal(err)
		}
		m.Router.MustRun("nft", "-f", p)
	case RuleIPTables:
		for _, tool := range []string{"iptables", "ip6tables"} {
			testenv.RequireCommand(m.t, tool)
			rule := []string{tool, "-t", "nat", "-A", "POSTROUTING", "-o", "wan0"}
			var opts []string
			if spec.RandomFully {
				opts = append(opts, "--random-fully")
			}
			if spec.ToPorts[0] == 0 {
				m.Router.MustRun(append(append(rule, "-j", "MASQUERADE"), opts...)...)
				continue
			}
			// --to-ports needs a protocol match: one rule per protocol.
			opts = append(opts, "--to-ports", fmt.Sprintf("%d-%d", spec.ToPorts[0], spec.ToPorts[1]))
			for _, proto := range []string{"tcp", "udp"} {
				argv := append(append([]string(nil), rule...), "-p", proto, "-j", "MASQUERADE")
				m.Router.MustRun(append(argv, opts...)...)
			}
		}
	default:
		m.t.Fatalf("natfill: rule engine %q", spec.Rule)
	}
}

// serve starts the server's TCP listener and UDP echo on both addresses.
func (m *Masquerade) serve() {
	m.t.Helper()
	err := m.Server.Do(func() error {
		for _, a := range []netip.Addr{masqSrv4, masqSrv6} {
			l, err := net.ListenTCP("tcp", net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, m.TCPPort)))
			if err != nil {
				return err
			}
			u, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(a, m.UDPPort)))
			if err != nil {
				l.Close()
				return err
			}
			m.track(l, u)
			go m.acceptLoop(l)
			go m.echoLoop(u)
		}
		return nil
	})
	if err != nil {
		m.t.Fatalf("natfill: server in %s: %v", m.Server.Name, err)
	}
}

func (m *Masquerade) acceptLoop(l *net.TCPListener) {
	for {
		c, err := l.AcceptTCP()
		if err != nil {
			return // closed at cleanup
		}
		m.mu.Lock()
		m.peers[unix.IPPROTO_TCP][c.RemoteAddr().(*net.TCPAddr).AddrPort()] = true
		m.conns = append(m.conns, c)
		m.mu.Unlock()
	}
}

func (m *Masquerade) echoLoop(u *net.UDPConn) {
	buf := make([]byte, 64)
	for {
		n, from, err := u.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		m.mu.Lock()
		m.peers[unix.IPPROTO_UDP][netip.AddrPortFrom(from.Addr().Unmap(), from.Port())] = true
		m.mu.Unlock()
		_, _ = u.WriteToUDPAddrPort(buf[:n], from)
	}
}

func (m *Masquerade) track(cs ...io.Closer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.conns = append(m.conns, cs...)
}

func (m *Masquerade) closeAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.conns {
		c.Close()
	}
	m.conns = nil
}

// ServerFor returns the server address of client's family.
func (m *Masquerade) ServerFor(client netip.Addr) netip.Addr {
	if client.Is4() {
		return m.Server4
	}
	return m.Server6
}

// WANFor returns the router's translated source address of client's family.
func (m *Masquerade) WANFor(client netip.Addr) netip.Addr {
	if client.Is4() {
		return m.RouterWAN4
	}
	return m.RouterWAN6
}

// DialTCP opens a TCP connection from client (source port srcPort, 0 for
// an ephemeral one) to the server through the router and keeps it open
// until the test ends. It fails after timeout when the router drops the
// SYN (no NAT tuple was free).
func (m *Masquerade) DialTCP(client netip.Addr, srcPort uint16, timeout time.Duration) error {
	var conn net.Conn
	err := m.Clients.Do(func() error {
		d := net.Dialer{Timeout: timeout, LocalAddr: net.TCPAddrFromAddrPort(netip.AddrPortFrom(client, srcPort))}
		var err error
		conn, err = d.Dial("tcp", netip.AddrPortFrom(m.ServerFor(client), m.TCPPort).String())
		return err
	})
	if err != nil {
		return fmt.Errorf("tcp from %s port %d: %w", client, srcPort, err)
	}
	m.track(conn)
	return nil
}

// ErrNoReply is returned by SendUDP when no answer came back in time.
var ErrNoReply = errors.New("no reply")

// SendUDP sends one datagram from client:srcPort (0: ephemeral) to the
// server's echo and waits up to timeout for the answer; the flow's socket
// stays open until the test ends. It returns ErrNoReply when the router
// dropped it (no NAT tuple was free).
func (m *Masquerade) SendUDP(client netip.Addr, srcPort uint16, timeout time.Duration) error {
	var conn *net.UDPConn
	err := m.Clients.Do(func() error {
		var err error
		conn, err = net.DialUDP("udp", net.UDPAddrFromAddrPort(netip.AddrPortFrom(client, srcPort)),
			net.UDPAddrFromAddrPort(netip.AddrPortFrom(m.ServerFor(client), m.UDPPort)))
		return err
	})
	if err != nil {
		return fmt.Errorf("udp from %s port %d: %w", client, srcPort, err)
	}
	m.track(conn)
	if _, err := conn.Write([]byte("natfill")); err != nil {
		return fmt.Errorf("udp from %s port %d: %w", client, srcPort, err)
	}
	if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return err
	}
	buf := make([]byte, 16)
	if _, err := conn.Read(buf); err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("udp from %s port %d: %w", client, srcPort, ErrNoReply)
		}
		return fmt.Errorf("udp from %s port %d: %w", client, srcPort, err)
	}
	return nil
}

// ServerPeers returns the source addresses and ports the server saw for
// proto (unix.IPPROTO_TCP or IPPROTO_UDP): after masquerade, the router's
// translated tuples.
func (m *Masquerade) ServerPeers(proto uint8) []netip.AddrPort {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]netip.AddrPort, 0, len(m.peers[proto]))
	for p := range m.peers[proto] {
		out = append(out, p)
	}
	return out
}

// WaitServerPeers polls until the server has seen n peers of proto, or
// fails the test after a deadline (accepts and echoes run concurrently
// with the dials that caused them).
func (m *Masquerade) WaitServerPeers(proto uint8, n int) []netip.AddrPort {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		p := m.ServerPeers(proto)
		if len(p) >= n {
			return p
		}
		select {
		case <-ctx.Done():
			m.t.Fatalf("natfill: the server saw %d %s peers, want %d", len(p), ProtoName(proto), n)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// SNATKey is what SNAT port pressure groups by: the protocol, the
// translated source address and the destination (after any DNAT), whose
// combinations share the translated source ports.
type SNATKey struct {
	Proto      uint8
	Translated netip.Addr
	Dst        netip.AddrPort
}

// String formats the key.
func (k SNATKey) String() string {
	return fmt.Sprintf("%s %s -> %s", ProtoName(k.Proto), k.Translated, k.Dst)
}

// SNATCounts counts source-NATed entries by SNATKey, from their reply
// tuples (Reply.Dst is the translated source, Reply.Src:SrcPort the
// destination answering). Pass it List(t, ns, SrcNAT).
func SNATCounts(entries []Entry) map[SNATKey]int {
	out := map[SNATKey]int{}
	for _, e := range entries {
		out[SNATKey{Proto: e.Proto, Translated: e.Reply.Dst, Dst: netip.AddrPortFrom(e.Reply.Src, e.Reply.SrcPort)}]++
	}
	return out
}

// RouterSNAT is List(t, m.Router, SrcNAT): the router's masqueraded
// entries.
func (m *Masquerade) RouterSNAT() []Entry {
	m.t.Helper()
	return List(m.t, m.Router, SrcNAT)
}

// SetLocalPortRange sets net.ipv4.ip_local_port_range (which applies to
// IPv6 sockets too) in ns, one of the topology's namespaces.
func SetLocalPortRange(ns *netns.NS, lo, hi uint16) {
	ns.SetSysctl("net.ipv4.ip_local_port_range", fmt.Sprintf("%d %d", lo, hi))
}
