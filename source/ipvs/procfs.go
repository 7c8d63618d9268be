package ipvs

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/netinspect/netinspect/source/netns"
)

// ProcService is a virtual server as /proc/net/ip_vs shows it: the file
// node_exporter reads. It lists every backend in one read, which netlink
// cannot (one IPVS_CMD_GET_DEST per virtual server), but lacks the counters
// and does not tell an IPv4 fwmark service from an IPv6 one.
type ProcService struct {
	Protocol  string // "TCP", "UDP", "SCTP" or "FWM"
	Addr      netip.Addr
	Port      uint16
	FWMark    uint32
	Scheduler string
	Backends  []ProcBackend
}

// ProcBackend is one "->" line of /proc/net/ip_vs.
type ProcBackend struct {
	Addr             netip.Addr
	Port             uint16
	Forward          string
	Weight           uint32
	Active, Inactive uint32
}

// ParseProc parses /proc/net/ip_vs (ip_vs_info_seq_show in
// net/netfilter/ipvs/ip_vs_ctl.c): three header lines, then a line per
// virtual server ("TCP  0A600001:0050 rr") followed by its backends
// ("  -> 0A000202:0050      Masq    1      0          0"). IPv6
// addresses are printed as [x:x:...]:PORT with hex groups.
func ParseProc(r io.Reader) ([]ProcService, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	var out []ProcService
	line := 0
	for sc.Scan() {
		line++
		if line <= 3 {
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		if f[0] == "->" {
			if len(out) == 0 || len(f) < 6 {
				return nil, fmt.Errorf("line %d: backend line out of place: %q", line, sc.Text())
			}
			addr, port, err := parseProcAddrPort(f[1])
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", line, err)
			}
			var nums [3]uint32
			for i := range nums {
				v, err := strconv.ParseUint(f[3+i], 10, 32)
				if err != nil {
					return nil, fmt.Errorf("line %d: %w", line, err)
				}
				nums[i] = uint32(v)
			}
			s := &out[len(out)-1]
			s.Backends = append(s.Backends, ProcBackend{Addr: addr, Port: port, Forward: f[2], Weight: nums[0], Active: nums[1], Inactive: nums[2]})
			continue
		}
		if len(f) < 3 {
			return nil, fmt.Errorf("line %d: short service line %q", line, sc.Text())
		}
		s := ProcService{Protocol: f[0], Scheduler: f[2]}
		if f[0] == "FWM" {
			v, err := strconv.ParseUint(f[1], 16, 32)
			if err != nil {
				return nil, fmt.Errorf("line %d: fwmark: %w", line, err)
			}
			s.FWMark = uint32(v)
		} else {
			var err error
			if s.Addr, s.Port, err = parseProcAddrPort(f[1]); err != nil {
				return nil, fmt.Errorf("line %d: %w", line, err)
			}
		}
		out = append(out, s)
	}
	return out, sc.Err()
}

// parseProcAddrPort parses "0A600001:0050" or "[2001:0db8:...:0001]:0050".
func parseProcAddrPort(s string) (netip.Addr, uint16, error) {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return netip.Addr{}, 0, fmt.Errorf("address %q has no port", s)
	}
	port, err := strconv.ParseUint(s[i+1:], 16, 16)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("port of %q: %w", s, err)
	}
	a := s[:i]
	if strings.HasPrefix(a, "[") {
		addr, err := netip.ParseAddr(strings.Trim(a, "[]"))
		if err != nil {
			return netip.Addr{}, 0, fmt.Errorf("address %q: %w", s, err)
		}
		return addr, uint16(port), nil
	}
	var b [4]byte
	if len(a) != 8 {
		return netip.Addr{}, 0, fmt.Errorf("address %q: want 8 hex digits", s)
	}
	if _, err := hex.Decode(b[:], []byte(a)); err != nil {
		return netip.Addr{}, 0, fmt.Errorf("address %q: %w", s, err)
	}
	return netip.AddrFrom4(b), uint16(port), nil
}

// ProcStats are the totals of /proc/net/ip_vs_stats (all virtual
// servers of the network namespace).
type ProcStats struct {
	Conns, InPkts, OutPkts, InBytes, OutBytes uint64
}

// ParseProcStats parses /proc/net/ip_vs_stats: after two header lines,
// a line of five hex totals (Conns InPkts OutPkts InBytes OutBytes).
func ParseProcStats(r io.Reader) (ProcStats, error) {
	sc := bufio.NewScanner(r)
	var st ProcStats
	for line := 1; sc.Scan(); line++ {
		if line != 3 {
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 5 {
			return st, fmt.Errorf("line 3: want 5 fields, got %q", sc.Text())
		}
		dst := []*uint64{&st.Conns, &st.InPkts, &st.OutPkts, &st.InBytes, &st.OutBytes}
		for i, p := range dst {
			v, err := strconv.ParseUint(f[i], 16, 64)
			if err != nil {
				return st, fmt.Errorf("line 3 field %d: %w", i+1, err)
			}
			*p = v
		}
		return st, nil
	}
	if err := sc.Err(); err != nil {
		return st, err
	}
	return st, fmt.Errorf("no totals line")
}

// ReadProc reads and parses /proc/net/ip_vs of target: for the caller's own
// namespace the one under the procfs mounted at procfs, for another one the
// calling thread's file after entering it on a locked thread (a procfs
// mount shows the namespace of the process that mounted it).
func ReadProc(target netns.Target, procfs string) ([]ProcService, error) {
	var data []byte
	read := func(path string) error {
		var err error
		data, err = os.ReadFile(path)
		return err
	}
	var err error
	if target.IsOwn() {
		err = read(filepath.Join(procfs, "net/ip_vs"))
	} else {
		err = target.Do(func() error { return read("/proc/thread-self/net/ip_vs") })
	}
	if err != nil {
		return nil, fmt.Errorf("read IPVS backends: %w", err)
	}
	svcs, err := ParseProc(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("parse /proc/net/ip_vs: %w", err)
	}
	return svcs, nil
}
