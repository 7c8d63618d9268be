// Package inspect builds the one-shot report of `netinspect inspect`: it runs
// the same collectors as the exporter once, and turns their metrics and the
// Kubernetes index into what an engineer on the node would otherwise piece
// together from kubectl, nsenter, conntrack, iptables, nft and ipvsadm.
package inspect

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

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

// Families are gathered metric families by name.
type Families map[string]*dto.MetricFamily

// Gather runs every source once and returns all their metrics and the
// sources that failed. A source that works in the background (a
// collector.Starter) is started first and given until ctx's deadline to
// produce its first snapshot.
func Gather(ctx context.Context, sources []Source) (Families, []Problem) {
	fams := Families{}
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
		got, err := gatherOne(ctx, s)
		for name, f := range got {
			fams[name] = f
		}
		if err != nil {
			problems = append(problems, Problem{Source: s.Name, Absent: errors.Is(err, collector.ErrNoData), Reason: err.Error()})
		}
	}
	sort.Slice(problems, func(i, j int) bool { return problems[i].Source < problems[j].Source })
	return fams, problems
}

// gatherOne collects one source, retrying while a background source has no
// snapshot yet (collector.ErrNotReady) until ctx is done.
func gatherOne(ctx context.Context, s Source) (Families, error) {
	for {
		fams, err := collectOnce(ctx, s.Collector)
		if !errors.Is(err, collector.ErrNotReady) {
			return fams, err
		}
		select {
		case <-ctx.Done():
			return fams, err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// collectOnce runs one Update through a registry, which turns the const
// metrics into named families.
func collectOnce(ctx context.Context, c collector.Collector) (Families, error) {
	a := &adapter{ctx: ctx, c: c}
	reg := prometheus.NewRegistry()
	if err := reg.Register(a); err != nil {
		return nil, err
	}
	mfs, gerr := reg.Gather()
	fams := Families{}
	for _, mf := range mfs {
		fams[mf.GetName()] = mf
	}
	if a.err != nil {
		return fams, a.err
	}
	return fams, gerr
}

type adapter struct {
	ctx context.Context
	c   collector.Collector
	err error
}

func (*adapter) Describe(chan<- *prometheus.Desc) {}

func (a *adapter) Collect(ch chan<- prometheus.Metric) { a.err = a.c.Update(a.ctx, ch) }

// series are the samples of one family, each with its labels as a map.
type series struct {
	labels map[string]string
	value  float64
}

func (f Families) series(name string) []series {
	mf, ok := f[name]
	if !ok {
		return nil
	}
	out := make([]series, 0, len(mf.GetMetric()))
	for _, m := range mf.GetMetric() {
		s := series{labels: map[string]string{}}
		for _, l := range m.GetLabel() {
			s.labels[l.GetName()] = l.GetValue()
		}
		switch {
		case m.Gauge != nil:
			s.value = m.GetGauge().GetValue()
		case m.Counter != nil:
			s.value = m.GetCounter().GetValue()
		case m.Untyped != nil:
			s.value = m.GetUntyped().GetValue()
		}
		out = append(out, s)
	}
	return out
}

// value returns the single unlabelled sample of name.
func (f Families) value(name string) (float64, bool) {
	s := f.series(name)
	if len(s) != 1 {
		return 0, false
	}
	return s[0].value, true
}
