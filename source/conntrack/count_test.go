package conntrack

import (
	"context"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/netinspect/netinspect/source/netns"
	"github.com/netinspect/netinspect/test/ctfill"
	testns "github.com/netinspect/netinspect/test/netns"
	"github.com/netinspect/netinspect/test/testenv"
)

// TestReadCountsMatchConntrackC fills two namespaces' tables with
// different numbers of entries and reads both at once, against `conntrack
// -C` and nf_conntrack_max.
func TestReadCountsMatchConntrackC(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "conntrack")
	nss := []*testns.NS{testns.New(t, "cnt-a"), testns.New(t, "cnt-b"), testns.New(t, "cnt-empty")}
	for i, n := range []int{300, 17} {
		spec := ctfill.Spec{Count: n, Src: mustAddr("10.1.0.1"), Dst: mustAddr("10.2.0.1"), DstPort: 53}
		if got, err := ctfill.Create(nss[i].FD(), spec); err != nil || got != n {
			t.Fatalf("created %d of %d: %v", got, n, err)
		}
	}
	var paths []string
	var ids []netns.ID
	for _, ns := range nss {
		paths = append(paths, ns.Path())
		id, _ := netns.Stat(ns.Path())
		ids = append(ids, id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err := ReadCounts(ctx, paths, ids)
	if err != nil {
		t.Fatal(err)
	}
	limit, _ := strconv.ParseUint(strings.TrimSpace(nss[0].Sysctl("net.netfilter.nf_conntrack_max")), 10, 64)
	for i, ns := range nss {
		want, _ := strconv.ParseUint(strings.TrimSpace(ns.MustRun("conntrack", "-C")), 10, 64)
		if got[i].Err != nil || got[i].Entries != want || got[i].Limit != limit {
			t.Errorf("%s: %+v, want %d entries of %d (conntrack -C, nf_conntrack_max)", ns.Name, got[i], want, limit)
		}
	}
}

var mustAddr = netip.MustParseAddr
