// Package inspect builds the one-shot report of `netinspect inspect`: it runs
// the same collectors as the exporter once, and turns their typed results
// and the Kubernetes index into what an engineer on the node would otherwise
// piece together from kubectl, nsenter, conntrack, iptables, nft and
// ipvsadm. It reads no metric by name: a collector's result is a Go value,
// so renaming a metric cannot silently blank a part of the report.
package inspect

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/netinspect/netinspect/collector"
)

// Source is one collector the report reads.
type Source struct {
	Name      string
	Collector collector.Collector
}

// Problem is a source the report could not read, and why.
type Problem struct {
	Source string `json:"source"`
	// Absent is true when the kernel feature or data is not there at all
	// (collector.ErrNoData), as opposed to a failure.
	Absent bool   `json:"absent"`
	Reason string `json:"reason"`
}

// Results are the collectors' typed results the report is built from; nil
// where a collector did not run or had nothing.
type Results struct {
	Conntrack   *collector.ConntrackResult
	Veth        *collector.VethResult
	IPTables    *collector.IPTablesResult
	NFTables    *collector.NFTablesResult
	IPVS        *collector.IPVSResult
	Attribution *collector.AttributionResult
	Neighbour   *collector.NeighbourResult
	DNS         *collector.DNSResult
}

// resulter is a collector whose latest result the report reads: every
// collector of package collector has a Result method of its own result
// type.
type resulter[T any] interface {
	Result(context.Context) (T, error)
}

// Gather reads every source once and returns their results and the sources
// that failed. A source that works in the background (a collector.Starter)
// is started first and given until ctx's deadline to produce its first
// snapshot.
func Gather(ctx context.Context, sources []Source) (Results, []Problem) {
	var r Results
	var problems []Problem
	// Start every background source first, so their first passes overlap.
	started := make([]Source, 0, len(sources))
	for _, s := range sources {
		if st, ok := s.Collector.(collector.Starter); ok {
			if err := st.Start(ctx); err != nil {
				problems = append(problems, Problem{Source: s.Name, Reason: fmt.Sprintf("start: %v", err)})
				continue
			}
		}
		started = append(started, s)
	}
	for _, s := range started {
		if err := gatherOne(ctx, s.Collector, &r); err != nil {
			problems = append(problems, Problem{Source: s.Name, Absent: errors.Is(err, collector.ErrNoData), Reason: err.Error()})
		}
	}
	sort.Slice(problems, func(i, j int) bool { return problems[i].Source < problems[j].Source })
	return r, problems
}

// gatherOne reads the result of c into its field of r.
func gatherOne(ctx context.Context, c collector.Collector, r *Results) error {
	switch c := c.(type) {
	case resulter[*collector.ConntrackResult]:
		return read(ctx, c, &r.Conntrack)
	case resulter[*collector.VethResult]:
		return read(ctx, c, &r.Veth)
	case resulter[*collector.IPTablesResult]:
		return read(ctx, c, &r.IPTables)
	case resulter[*collector.NFTablesResult]:
		return read(ctx, c, &r.NFTables)
	case resulter[*collector.IPVSResult]:
		return read(ctx, c, &r.IPVS)
	case resulter[*collector.AttributionResult]:
		return read(ctx, c, &r.Attribution)
	case resulter[*collector.NeighbourResult]:
		return read(ctx, c, &r.Neighbour)
	case resulter[*collector.DNSResult]:
		return read(ctx, c, &r.DNS)
	}
	// A collector the report has no part for: run it once for its errors.
	ch := make(chan prometheus.Metric)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range ch {
		}
	}()
	err := c.Update(ctx, ch)
	close(ch)
	<-done
	return err
}

// read reads src into dst, retrying while a background source has no
// snapshot yet (collector.ErrNotReady) until ctx is done. A result that
// comes with an error (a listing that failed after an earlier success) is
// kept.
func read[T any](ctx context.Context, src resulter[*T], dst **T) error {
	for {
		v, err := src.Result(ctx)
		if !errors.Is(err, collector.ErrNotReady) {
			*dst = v
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}
