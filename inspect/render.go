package inspect

import (
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
)

// WriteJSON writes the report as indented JSON.
func (r Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// Width is the terminal width the table fits in.
const Width = 80

// WriteTable writes the report for a person on an 80-column terminal.
func (r Report) WriteTable(w io.Writer) error {
	p := &printer{w: w}
	mode := r.KubeProxyMode
	if mode == "" {
		mode = "unknown"
	}
	p.line("node %s   kubernetes: %s   kube-proxy mode: %s", orDash(r.Node), r.Kubernetes, mode)

	p.section("CONNTRACK")
	if c := r.Conntrack; c == nil {
		p.line("  not collected (collector disabled, or see NOT READ below)")
	} else {
		p.line("  %s of %s entries (%.1f%%), read from %s", num(c.Entries), num(c.Limit), 100*c.UsageRatio, c.Source)
		names := make([]string, 0, len(c.Stats))
		for n := range c.Stats {
			names = append(names, n)
		}
		sort.Strings(names)
		var parts []string
		for _, n := range names {
			parts = append(parts, n+" "+num(c.Stats[n]))
		}
		p.wrapped("  ", parts)
		if len(c.TopPods) > 0 {
			p.wrapped("  top pods: ", entries(c.TopPods))
		}
		if len(c.TopServices) > 0 {
			p.wrapped("  top services: ", entries(c.TopServices))
		}
	}

	p.section("PODS")
	if len(r.Pods) == 0 {
		p.line("  none")
	} else {
		t := table{widths: []int{28, 24, 18, 6}, header: []string{"NAMESPACE/POD", "IPS", "HOST VETH/METHOD", "CT"}}
		for _, pod := range r.Pods {
			ips := strings.Join(pod.IPs, ",")
			if pod.HostNetwork {
				ips = "(host network)"
			}
			veths := make([]string, 0, len(pod.Interfaces))
			for _, i := range pod.Interfaces {
				veths = append(veths, i.HostInterface+"/"+i.Method)
			}
			t.add(pod.Namespace+"/"+pod.Name, ips, strings.Join(veths, ","), optNum(pod.ConntrackEntries))
			if pod.Netns != "" {
				t.note("    netns " + pod.Netns)
			}
		}
		t.write(p)
	}

	if d := r.KubeProxyDrift; d != nil {
		p.section("KUBE-PROXY DRIFT")
		for _, fd := range d.Families {
			p.line("  %s (%s mode): %d in sync, %d missing, %d stale, %d endpoints; oldest %ss",
				fd.Family, d.Mode, fd.InSync, fd.Missing, fd.Stale, fd.Endpoints, num(fd.OldestSeconds))
		}
		if d.Pending > 0 {
			p.line("  %d mismatches within their grace (not counted yet)", d.Pending)
		}
	}

	p.section("SERVICES")
	if len(r.Services) == 0 {
		p.line("  none")
	} else {
		t := table{widths: []int{26, 15, 10, 5, 9, 9}, header: []string{"NAMESPACE/SERVICE", "CLUSTER-IP", "PORT", "READY", "KERNEL", "CT"}}
		for _, s := range r.Services {
			ready := "-"
			if s.ReadyEndpoints != nil {
				ready = strconv.Itoa(*s.ReadyEndpoints)
			}
			clusterIP := "-"
			if len(s.ClusterIPs) > 0 {
				clusterIP = s.ClusterIPs[0]
			}
			first := true
			for _, port := range s.Ports {
				name, ip, rd, ct := "", "", "", ""
				if first {
					name, ip, rd, ct = s.Namespace+"/"+s.Name, clusterIP, ready, optNum(s.ConntrackEntries)
					first = false
				}
				t.add(name, ip, port.Port, rd, kernel(port, s.IPVS), ct)
				if port.IPTablesChain != "" {
					t.note("    iptables chain " + port.IPTablesChain)
				}
				for _, d := range port.Drift {
					if d.State != "in_sync" {
						t.note(fmt.Sprintf("    drift %s: %s for %ss", d.Family, d.State, num(d.Seconds)))
					}
				}
			}
			if first {
				t.add(s.Namespace+"/"+s.Name, clusterIP, "-", ready, kernel(ServicePort{}, s.IPVS), optNum(s.ConntrackEntries))
			}
		}
		t.write(p)
		p.line("  KERNEL: endpoints kube-proxy programmed (ipt iptables, nft nftables,")
		p.line("  ipvs backends with active/inactive connections)")
	}

	if len(r.DNS) > 0 {
		p.section("DNS")
		t := table{widths: []int{40, 24, 6}, header: []string{"NAME", "SERVER", "OK"}}
		for _, d := range r.DNS {
			ok := "no"
			if d.Success {
				ok = "yes"
			}
			t.add(d.Name, d.Server, ok)
		}
		t.write(p)
	}

	if r.Tables != nil {
		p.writeTables(r.Tables)
	}

	if len(r.Problems) > 0 {
		p.section("NOT READ")
		for _, pr := range r.Problems {
			kind := "failed"
			if pr.Absent {
				kind = "absent"
			}
			p.wrapped("  "+pr.Source+" ("+kind+"): ", strings.Fields(pr.Reason))
		}
	}
	return p.err
}

func kernel(p ServicePort, ipvs *IPVSState) string {
	var parts []string
	if p.IPTablesEndpoints != nil {
		parts = append(parts, "ipt "+num(*p.IPTablesEndpoints))
	}
	if p.NFTablesEndpoints != nil {
		parts = append(parts, "nft "+num(*p.NFTablesEndpoints))
	}
	if ipvs != nil {
		parts = append(parts, fmt.Sprintf("ipvs %d %s/%s", ipvs.Backends, num(ipvs.ActiveConnections), num(ipvs.InactiveConnections)))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

func entries(es []Entries) []string {
	out := make([]string, 0, len(es))
	for _, e := range es {
		name := e.Namespace + "/" + e.Name
		if e.Name == "" {
			name = "(others)"
		}
		out = append(out, name+" "+num(e.Entries)+",")
	}
	if n := len(out); n > 0 {
		out[n-1] = strings.TrimSuffix(out[n-1], ",")
	}
	return out
}

func num(v float64) string { return strconv.FormatFloat(v, 'f', -1, 64) }

func optNum(v *float64) string {
	if v == nil {
		return "-"
	}
	return num(*v)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// printer writes lines no wider than Width, remembering the first error.
type printer struct {
	w   io.Writer
	err error
}

func (p *printer) line(format string, a ...any) {
	if p.err != nil {
		return
	}
	_, p.err = fmt.Fprintln(p.w, clip(fmt.Sprintf(format, a...), Width))
}

func (p *printer) section(title string) {
	p.line("")
	p.line("%s", title)
}

// wrapped writes words after prefix, wrapping at Width with an indent.
func (p *printer) wrapped(prefix string, words []string) {
	indent := strings.Repeat(" ", min(len(prefix), 20))
	cur := prefix
	for _, w := range words {
		if len(cur)+len(w)+1 > Width && strings.TrimSpace(cur) != strings.TrimSpace(prefix) {
			p.line("%s", cur)
			cur = indent
		}
		if cur != prefix && cur != indent {
			cur += " "
		}
		cur += w
	}
	p.line("%s", cur)
}

// table is a fixed-width table; cells wider than their column are clipped
// with "~" so a row never exceeds the terminal.
type table struct {
	widths []int
	header []string
	rows   [][]string
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

// note adds a row printed as is, across the columns.
func (t *table) note(text string) { t.rows = append(t.rows, []string{noteMark + text}) }

// noteMark starts the single cell of a note row.
const noteMark = "\x00"

func (t *table) write(p *printer) {
	for _, row := range append([][]string{t.header}, t.rows...) {
		if len(row) == 1 && strings.HasPrefix(row[0], noteMark) {
			p.line("  %s", strings.TrimPrefix(row[0], noteMark))
			continue
		}
		var b strings.Builder
		b.WriteString("  ")
		for i, cell := range row {
			if i == len(row)-1 {
				b.WriteString(clip(cell, t.widths[i]))
				break
			}
			fmt.Fprintf(&b, "%-*s ", t.widths[i], clip(cell, t.widths[i]))
		}
		p.line("%s", strings.TrimRight(b.String(), " "))
	}
}

func clip(s string, width int) string {
	if len(s) <= width {
		return s
	}
	return s[:width-1] + "~"
}
