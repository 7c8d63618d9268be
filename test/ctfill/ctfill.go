// Package ctfill creates conntrack entries in a test's network namespace
// through netlink, the way a busy node's traffic would fill the table.
package ctfill

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/mdlayher/netlink"
	"github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// Spec describes the flows to create: Count UDP flows from addresses counted
// up from Src (ports counted up from 1024 per address) to Dst:DstPort.
type Spec struct {
	Count    int
	Src, Dst netip.Addr
	DstPort  uint16
	Proto    uint8 // 6 tcp, 17 udp; 0 means udp
	// Assured marks the entries IPS_ASSURED, so the kernel cannot evict them
	// when the table is full (early_drop skips assured entries).
	Assured bool
	// TimeoutSeconds keeps the entries alive for the test; 0 means 600.
	TimeoutSeconds uint32
	// ReplySrc, when set, makes the flows look DNATed: their reply tuple
	// comes from ReplySrc:ReplySrcPort (the backend a Service rule chose)
	// instead of Dst:DstPort. ReplySrcPort 0 means DstPort.
	ReplySrc     netip.Addr
	ReplySrcPort uint16
}

// flowsPerSource is how many source ports are used per source address.
const flowsPerSource = 60000

// Flows returns the flows of spec without creating them.
func Flows(spec Spec) []conntrack.Flow {
	proto := spec.Proto
	if proto == 0 {
		proto = 17
	}
	timeout := spec.TimeoutSeconds
	if timeout == 0 {
		timeout = 600
	}
	var status conntrack.Status
	if spec.Assured {
		// ctnetlink_change_status refuses (EBUSY) a status that differs
		// from the entry's in IPS_CONFIRMED, and on 6.x kernels the entry is
		// already confirmed when the status of a new flow is applied, so the
		// bit must be sent along (seen on 6.18).
		status = conntrack.StatusConfirmed | conntrack.StatusSeenReply | conntrack.StatusAssured
	}
	flows := make([]conntrack.Flow, 0, spec.Count)
	src := spec.Src
	for i := 0; i < spec.Count; i++ {
		if i > 0 && i%flowsPerSource == 0 {
			src = src.Next()
		}
		port := uint16(1024 + i%flowsPerSource)
		f := conntrack.NewFlow(proto, status, src, spec.Dst, port, spec.DstPort, timeout, 0)
		if spec.ReplySrc.IsValid() {
			f.TupleReply.IP.SourceAddress = spec.ReplySrc
			if spec.ReplySrcPort != 0 {
				f.TupleReply.Proto.SourcePort = spec.ReplySrcPort
			}
		}
		flows = append(flows, f)
	}
	return flows
}

// Create creates the flows of spec in the network namespace netnsFD, with
// a few netlink sockets in parallel. It stops at the first error, except
// that ENOMEM (the table is full) is returned as ErrTableFull after
// counting what was created.
func Create(netnsFD int, spec Spec) (created int, err error) {
	flows := Flows(spec)
	const workers = 4
	var (
		mu       sync.Mutex
		firstErr error
		wg       sync.WaitGroup
	)
	chunk := (len(flows) + workers - 1) / workers
	for w := 0; w < workers; w++ {
		lo, hi := w*chunk, min((w+1)*chunk, len(flows))
		if lo >= hi {
			break
		}
		wg.Add(1)
		go func(part []conntrack.Flow) {
			defer wg.Done()
			n, err := createAll(netnsFD, part)
			mu.Lock()
			defer mu.Unlock()
			created += n
			if err != nil && firstErr == nil {
				firstErr = err
			}
		}(flows[lo:hi])
	}
	wg.Wait()
	return created, firstErr
}

// ErrTableFull is returned when the kernel refuses new entries because the
// table is at nf_conntrack_max.
var ErrTableFull = errors.New("conntrack table full")

func createAll(netnsFD int, flows []conntrack.Flow) (int, error) {
	conn, err := conntrack.Dial(&netlink.Config{NetNS: netnsFD})
	if err != nil {
		return 0, fmt.Errorf("dial conntrack: %w", err)
	}
	defer conn.Close()
	for i, f := range flows {
		if err := conn.Create(f); err != nil {
			if errors.Is(err, unix.ENOMEM) {
				return i, ErrTableFull
			}
			return i, fmt.Errorf("create flow %d (%v -> %v): %w", i, f.TupleOrig.IP.SourceAddress, f.TupleOrig.IP.DestinationAddress, err)
		}
	}
	return len(flows), nil
}
