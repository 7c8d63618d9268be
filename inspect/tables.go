package inspect

import (
	"fmt"
	"strconv"
	"strings"
)

// Tables is the TABLES part of the report: the node's tables that fill up
// or lie, besides the conntrack table's size: its sizing and timeouts,
// stale entries, source-NAT ports, the neighbour tables and the pods' own
// conntrack tables. A part is null (or empty) when its collector did not
// run or had nothing.
type Tables struct {
	Conntrack    *ConntrackSizing    `json:"conntrack"`
	Stale        *StaleEntries       `json:"stale"`
	SNAT         *SNATPorts          `json:"snat"`
	Neighbour    []NeighbourTable    `json:"neighbour"`
	PodConntrack []PodConntrackTable `json:"pod_conntrack"`
}

// ConntrackSizing is the conntrack table's size against its hash table and
// the timeouts that decide how long entries stay (null where the sysctl
// was not read).
type ConntrackSizing struct {
	Limit   float64  `json:"limit"`
	Buckets *float64 `json:"buckets"`
	// TimeoutsSeconds maps "protocol/state" (or "protocol" for protocols
	// with one timeout) to the timeout.
	TimeoutsSeconds map[string]float64 `json:"timeouts_seconds"`
	TCPLoose        *bool              `json:"tcp_loose"`
	TCPBeLiberal    *bool              `json:"tcp_be_liberal"`
	Timestamp       *bool              `json:"timestamp"`
}

// StaleEntries are the conntrack entries kube-proxy would delete as stale.
type StaleEntries struct {
	Entries           float64        `json:"entries"`
	Blackhole         float64        `json:"blackhole"`
	MaxTimeoutSeconds float64        `json:"max_timeout_seconds"`
	OldestAgeSeconds  *float64       `json:"oldest_age_seconds"`
	Services          []StaleService `json:"services"`
	Pairs             []StalePair    `json:"pairs"`
}

// StaleService is the stale entries of one service.
type StaleService struct {
	Namespace string  `json:"namespace"`
	Service   string  `json:"service"`
	Protocol  string  `json:"protocol"`
	Entries   float64 `json:"entries"`
	Blackhole float64 `json:"blackhole"`
}

// StalePair is the stale entries from one frontend to one old backend, with
// the read-only command that lists them on the node.
type StalePair struct {
	Namespace   string  `json:"namespace"`
	Service     string  `json:"service"`
	Frontend    string  `json:"frontend"`
	ReplySource string  `json:"reply_source"`
	Entries     float64 `json:"entries"`
	Command     string  `json:"command"`
}

// SNATPorts is the source-NAT port usage of the node.
type SNATPorts struct {
	Entries    float64     `json:"entries"`
	Tuples     float64     `json:"tuples"`
	Undercount float64     `json:"undercount"`
	WorstRatio float64     `json:"worst_ratio"`
	Top        []SNATTuple `json:"top"`
}

// SNATTuple is one translated tuple's usage.
type SNATTuple struct {
	Protocol    string  `json:"protocol"`
	Translated  string  `json:"translated"`
	Destination string  `json:"destination"`
	Entries     float64 `json:"entries"`
	Ports       float64 `json:"ports"`
	Ratio       float64 `json:"ratio"`
}

// NeighbourTable is one family's neighbour table.
type NeighbourTable struct {
	Family     string   `json:"family"`
	Entries    float64  `json:"entries"`
	GCThresh1  float64  `json:"gc_thresh1"`
	GCThresh2  float64  `json:"gc_thresh2"`
	GCThresh3  float64  `json:"gc_thresh3"`
	TableFulls *float64 `json:"table_fulls"`
	Source     string   `json:"source"`
}

// PodConntrackTable is the conntrack table of a pod's own namespace.
type PodConntrackTable struct {
	Namespace string  `json:"namespace"`
	Pod       string  `json:"pod"`
	Entries   float64 `json:"entries"`
	Limit     float64 `json:"limit"`
}

// tables builds the TABLES part from the collectors' results.
func tables(res Results, f Filter) *Tables {
	t := &Tables{Neighbour: []NeighbourTable{}, PodConntrack: []PodConntrackTable{}}
	if ct := res.Conntrack; ct != nil {
		s := ct.Settings
		c := &ConntrackSizing{Limit: float64(ct.Limit), TimeoutsSeconds: map[string]float64{}}
		if s.Buckets.OK {
			v := float64(s.Buckets.Value)
			c.Buckets = &v
		}
		for _, to := range s.Timeouts {
			k := to.Protocol
			if to.State != "" {
				k += "/" + to.State
			}
			c.TimeoutsSeconds[k] = to.Timeout.Seconds()
		}
		if s.TCPLoose.OK {
			c.TCPLoose = &s.TCPLoose.Value
		}
		if s.TCPBeLiberal.OK {
			c.TCPBeLiberal = &s.TCPBeLiberal.Value
		}
		if s.Timestamp.OK {
			c.Timestamp = &s.Timestamp.Value
		}
		t.Conntrack = c
	}
	if a := res.Attribution; a != nil {
		st := a.Stale
		s := &StaleEntries{Entries: float64(st.Entries), Blackhole: float64(st.Blackhole), MaxTimeoutSeconds: st.MaxTimeout.Seconds(),
			Services: []StaleService{}, Pairs: []StalePair{}}
		if !st.OldestStart.IsZero() {
			v := max(a.Finished.Sub(st.OldestStart).Seconds(), 0)
			s.OldestAgeSeconds = &v
		}
		for _, c := range st.Services {
			if c.Name != "" && !f.service(c.Namespace, c.Name) {
				continue
			}
			s.Services = append(s.Services, StaleService{Namespace: c.Namespace, Service: c.Name, Protocol: c.Protocol,
				Entries: float64(c.Entries), Blackhole: float64(c.Blackhole)})
		}
		for _, p := range st.Pairs {
			if !f.service(p.Namespace, p.Name) {
				continue
			}
			s.Pairs = append(s.Pairs, StalePair{Namespace: p.Namespace, Service: p.Name,
				Frontend: p.Frontend.String(), ReplySource: p.ReplySource.String(), Entries: float64(p.Entries),
				Command: fmt.Sprintf("conntrack -L -p %s -d %s --reply-src %s", p.Protocol, p.Frontend.Addr(), p.ReplySource.Addr())})
		}
		t.Stale = s
		sn := a.SNAT
		n := &SNATPorts{Entries: float64(sn.Entries), Tuples: float64(sn.Tuples), Undercount: float64(sn.Undercount),
			WorstRatio: sn.Worst, Top: []SNATTuple{}}
		for _, u := range sn.Top {
			n.Top = append(n.Top, SNATTuple{Protocol: protocolName(u.Protocol), Translated: u.Translated.String(),
				Destination: u.Destination.String(), Entries: float64(u.Entries), Ports: float64(u.Ports), Ratio: u.Ratio})
		}
		t.SNAT = n
	}
	if nb := res.Neighbour; nb != nil {
		for _, tb := range nb.Tables {
			n := NeighbourTable{Family: tb.Family, Entries: float64(tb.Entries), GCThresh1: float64(tb.GCThresh1),
				GCThresh2: float64(tb.GCThresh2), GCThresh3: float64(tb.GCThresh3), Source: tb.Source}
			if tb.Stats.HasTableFulls {
				v := float64(tb.Stats.TableFulls)
				n.TableFulls = &v
			}
			t.Neighbour = append(t.Neighbour, n)
		}
	}
	if v := res.Veth; v != nil {
		for _, p := range v.Conntrack {
			if f.pod(p.Pod.Namespace, p.Pod.Name) {
				t.PodConntrack = append(t.PodConntrack, PodConntrackTable{Namespace: p.Pod.Namespace, Pod: p.Pod.Name,
					Entries: float64(p.Entries), Limit: float64(p.Limit)})
			}
		}
	}
	return t
}

// protocolName spells an IP protocol number as the protocol label does.
func protocolName(p uint8) string {
	switch p {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 132:
		return "sctp"
	}
	return strconv.Itoa(int(p))
}

// writeTables writes the TABLES section.
func (p *printer) writeTables(t *Tables) {
	p.section("TABLES")
	if c := t.Conntrack; c != nil {
		line := fmt.Sprintf("  conntrack limit %s", num(c.Limit))
		if c.Buckets != nil {
			line += fmt.Sprintf(", %s hash buckets (limit/4 = %s)", num(*c.Buckets), num(c.Limit/4))
		}
		p.line("%s", line)
		var parts []string
		for _, k := range []string{"tcp/established", "tcp/time_wait", "tcp/close_wait", "tcp/syn_sent", "udp/unreplied", "udp/stream"} {
			if v, ok := c.TimeoutsSeconds[k]; ok {
				parts = append(parts, k+" "+num(v)+"s,")
			}
		}
		for _, b := range []struct {
			name string
			v    *bool
		}{{"tcp_loose", c.TCPLoose}, {"tcp_be_liberal", c.TCPBeLiberal}, {"timestamp", c.Timestamp}} {
			if b.v != nil {
				parts = append(parts, fmt.Sprintf("%s %d,", b.name, map[bool]int{false: 0, true: 1}[*b.v]))
			}
		}
		if n := len(parts); n > 0 {
			parts[n-1] = strings.TrimSuffix(parts[n-1], ",")
			p.wrapped("  timeouts: ", parts)
		}
	}
	if s := t.Stale; s != nil {
		line := fmt.Sprintf("%s entries, %s black-holing", num(s.Entries), num(s.Blackhole))
		if s.Entries > 0 {
			line += fmt.Sprintf(", up to %ss left", num(s.MaxTimeoutSeconds))
		}
		p.wrapped("  stale (kube-proxy's sense): ", strings.Fields(line))
		for _, c := range s.Services {
			name := c.Namespace + "/" + c.Service
			if c.Service == "" {
				name = "(others)"
			}
			p.line("    %s %s: %s (%s black-holing)", name, c.Protocol, num(c.Entries), num(c.Blackhole))
		}
		for _, pr := range s.Pairs {
			p.line("    %s -> %s: %s", pr.Frontend, pr.ReplySource, num(pr.Entries))
			p.line("      %s", pr.Command)
		}
	}
	if s := t.SNAT; s != nil {
		p.line("  snat: %s entries in %s tuples, worst %.1f%% of its ports", num(s.Entries), num(s.Tuples), 100*s.WorstRatio)
		for _, u := range s.Top {
			p.line("    %s %s -> %s: %s of %s", u.Protocol, u.Translated, u.Destination, num(u.Entries), num(u.Ports))
		}
	}
	for _, n := range t.Neighbour {
		fulls := "-"
		if n.TableFulls != nil {
			fulls = num(*n.TableFulls)
		}
		p.line("  neighbour %s: %s entries, gc_thresh1/2/3 %s/%s/%s, table_fulls %s", n.Family,
			num(n.Entries), num(n.GCThresh1), num(n.GCThresh2), num(n.GCThresh3), fulls)
	}
	if len(t.PodConntrack) > 0 {
		var parts []string
		for _, pc := range t.PodConntrack {
			parts = append(parts, pc.Namespace+"/"+pc.Pod+" "+num(pc.Entries)+",")
		}
		parts[len(parts)-1] = strings.TrimSuffix(parts[len(parts)-1], ",")
		p.wrapped("  pods' own conntrack tables: ", parts)
	}
}
