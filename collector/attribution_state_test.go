package collector

import (
	"context"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/netinspect/netinspect/test/controlplane"
	"github.com/netinspect/netinspect/test/ctfill"
	"github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// conntrackStates is the ground truth of netinspect_conntrack_state_entries
// read from `conntrack -L` in the namespace: protocol, TCP state and
// [ASSURED] per line, formatted as exposition lines.
func conntrackStates(t testing.TB, ns *netns.NS) string {
	t.Helper()
	counts := map[string]int{}
	var out strings.Builder
	for _, family := range []string{"ipv4", "ipv6"} {
		// Stdout only: stderr carries the CLI's summary line.
		cmd := ns.Command(context.Background(), "conntrack", "-L", "-f", family)
		cmd.Stdout = &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("conntrack -L -f %s: %v", family, err)
		}
	}
	for _, line := range strings.Split(out.String(), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		state := ""
		if f[0] == "tcp" {
			state = strings.ToLower(f[3])
		}
		assured := strings.Contains(line, "[ASSURED]")
		counts[fmt.Sprintf(`{assured="%t",protocol="%s",state="%s"}`, assured, f[0], state)]++
	}
	var lines []string
	for k, n := range counts {
		lines = append(lines, fmt.Sprintf("netinspect_conntrack_state_entries%s %d", k, n))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// Real TCP connections over the namespace's loopback in several states
// (established, closed into time_wait), plus created udp and tcp entries
// with and without IPS_ASSURED: the state series equal what `conntrack -L`
// prints for the same table.
func TestAttributionStatesMatchConntrackCLI(t *testing.T) {
	testenv.RequireCommand(t, "conntrack")
	testenv.RequireCommand(t, "nft")
	ns := netns.New(t, "attr-state")
	// A fresh namespace tracks no traffic until a rule needs conntrack
	// (its hooks are registered per namespace on demand).
	ns.MustRun("nft", "add table inet netinspect_test")
	ns.MustRun("nft", "add chain inet netinspect_test out { type filter hook output priority 0 ; }")
	ns.MustRun("nft", "add rule inet netinspect_test out ct state new counter")
	fillFlows(t, ns, []ctfill.Spec{
		{Count: 70, Src: ip("10.244.0.10"), Dst: ip("10.96.0.10"), DstPort: 53},
		{Count: 30, Src: ip("10.244.0.11"), Dst: ip("10.96.0.10"), DstPort: 53, Assured: true},
		{Count: 20, Proto: 6, Src: ip("10.244.0.12"), Dst: ip("10.96.0.100"), DstPort: 80, Assured: true},
	})

	l, err := controlplane.ListenIn(ns.Path(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var served []net.Conn
	accepted := make(chan net.Conn)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	dial := controlplane.DialerIn(ns.Path())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	connect := func() (client, server net.Conn) {
		t.Helper()
		c, err := dial(ctx, "tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		s := <-accepted
		buf := make([]byte, 4)
		if _, err := io.ReadFull(s, buf); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		return c, s
	}
	// 12 connections stay open, 8 are closed by the client first (the
	// server answers the FIN), which leaves their entries in time_wait.
	for i := 0; i < 12; i++ {
		c, s := connect()
		served = append(served, c, s)
	}
	defer func() {
		for _, c := range served {
			c.Close()
		}
	}()
	for i := 0; i < 8; i++ {
		c, s := connect()
		c.Close()
		if _, err := io.ReadAll(s); err != nil {
			t.Fatal(err)
		}
		s.Close()
	}

	a := newNetnsAttribution(t, ns, attributionIndex(), 0)
	reg := attributionRegistry(t, a)
	// Entries change state with time (the last ACK of a close lands after
	// it): compare a pass with `conntrack -L` read before and after it, and
	// try again when the table moved in between.
	var diff error
	for try := 0; try < 5; try++ {
		before := conntrackStates(t, ns)
		mustPass(t, a)
		after := conntrackStates(t, ns)
		if before != after {
			diff = fmt.Errorf("table changed during the pass:\n%s\nvs\n%s", before, after)
			time.Sleep(200 * time.Millisecond)
			continue
		}
		for _, want := range []string{`protocol="tcp",state="established"`, `protocol="tcp",state="time_wait"`, `assured="false",protocol="udp",state=""`, `assured="true",protocol="udp",state=""`} {
			if !strings.Contains(after, want) {
				t.Fatalf("the test's table has no %s entries; conntrack -L:\n%s", want, after)
			}
		}
		want := `
# HELP netinspect_conntrack_state_entries Conntrack entries by protocol, TCP state (empty for other protocols) and whether the entry is assured (assured entries cannot be evicted by early drop when the table is full), at the last full pass.
# TYPE netinspect_conntrack_state_entries gauge
` + after + "\n"
		diff = testutil.GatherAndCompare(reg, strings.NewReader(want), "netinspect_conntrack_state_entries")
		if diff == nil {
			t.Logf("state series equal conntrack -L:\n%s", after)
			return
		}
	}
	t.Fatal(diff)
}
