package collector

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"github.com/mdlayher/netlink"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/ti-mo/netfilter"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// ConntrackName is the conntrack collector's name in flags and metrics.
const ConntrackName = "conntrack"

// ConntrackConfig configures the conntrack collector.
type ConntrackConfig struct {
	// PerCPU exports the statistics per CPU with a cpu label instead of summed.
	PerCPU bool
	// NetNS, when not 0, is an open file descriptor of the network namespace
	// to read through netlink instead of the exporter's own. Tests use it.
	NetNS int
}

// Conntrack reports conntrack table usage and statistics of the network
// namespace the exporter runs in, read through netlink (ctnetlink), or from
// procfs when netlink is refused (no CAP_NET_ADMIN).
type Conntrack struct {
	cfg    ConntrackConfig
	procfs string
	logger *zap.Logger

	entries, limit, source *prometheus.Desc
	stats                  [numConntrackStats]*prometheus.Desc

	fallbackOnce sync.Once
}

// NewConntrack returns the conntrack collector.
func NewConntrack(cfg ConntrackConfig, deps Deps) *Conntrack {
	var statLabels []string
	if cfg.PerCPU {
		statLabels = []string{"cpu"}
	}
	c := &Conntrack{
		cfg:    cfg,
		procfs: deps.Paths.ProcFS,
		logger: deps.Logger,
		entries: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "entries"),
			"Number of entries in the conntrack table of the exporter's network namespace.", nil, nil),
		limit: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "entries_limit"),
			"Maximum size of the conntrack table (nf_conntrack_max).", nil, nil),
		source: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "conntrack", "source_info"),
			"Where the conntrack figures were read from: netlink, or procfs when netlink is refused.", []string{"source"}, nil),
	}
	for s := range numConntrackStats {
		c.stats[s] = prometheus.NewDesc(
			prometheus.BuildFQName(Namespace, "conntrack", "stat_"+s.String()+"_total"),
			conntrackStatHelp[s], statLabels, nil)
	}
	return c
}

var conntrackStatHelp = [numConntrackStats]string{
	StatFound:         "Conntrack lookups that found an existing entry.",
	StatInvalid:       "Packets conntrack could not track (malformed, or out of window).",
	StatInsert:        "Entries inserted into the conntrack table.",
	StatInsertFailed:  "Entries that could not be inserted (a clash with an entry inserted at the same time that could not be resolved).",
	StatDrop:          "Packets dropped because the conntrack table was full and no entry could be evicted.",
	StatEarlyDrop:     "Entries evicted (non-assured) to make room when the conntrack table was full.",
	StatError:         "Packets that conntrack rejected with an error (counted as icmp_error in procfs).",
	StatSearchRestart: "Conntrack table lookups restarted because the hash table was resized.",
	StatClashResolve:  "Insert clashes the kernel resolved (typically UDP, e.g. parallel DNS queries).",
	StatChainTooLong:  "Entries inserted into a hash chain that was too long (hash table too small or attacked).",
}

// conntrackReading is one reading of the table, whichever source it came from.
type conntrackReading struct {
	source         string
	entries, limit uint64
	cpus           []ConntrackCPUStats
}

// Update implements Collector.
func (c *Conntrack) Update(ctx context.Context, ch chan<- prometheus.Metric) error {
	// Without the nf_conntrack module there is no table at all; checking the
	// sysctl first avoids asking netlink, which on modular kernels would make
	// the kernel try to load ctnetlink.
	maxPath := filepath.Join(c.procfs, "sys/net/netfilter/nf_conntrack_max")
	if _, err := os.Stat(maxPath); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s absent, nf_conntrack is not loaded: %w", maxPath, ErrNoData)
	}

	r, err := readConntrackNetlink(ctx, c.cfg.NetNS)
	if err != nil {
		if c.cfg.NetNS != 0 || !netlinkRefused(err) {
			return fmt.Errorf("read conntrack statistics over netlink: %w", err)
		}
		c.fallbackOnce.Do(func() {
			c.logger.Info("conntrack netlink refused, reading procfs instead (grant CAP_NET_ADMIN to use netlink)", zap.Error(err))
		})
		r, err = readConntrackProcfs(c.procfs)
		if err != nil {
			return fmt.Errorf("read conntrack statistics from procfs: %w", err)
		}
	}

	ch <- prometheus.MustNewConstMetric(c.entries, prometheus.GaugeValue, float64(r.entries))
	ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, float64(r.limit))
	ch <- prometheus.MustNewConstMetric(c.source, prometheus.GaugeValue, 1, r.source)
	c.emitStats(ch, r.cpus)
	return nil
}

func (c *Conntrack) emitStats(ch chan<- prometheus.Metric, cpus []ConntrackCPUStats) {
	for s := range numConntrackStats {
		if c.cfg.PerCPU {
			for _, cpu := range cpus {
				if cpu.Present[s] {
					ch <- prometheus.MustNewConstMetric(c.stats[s], prometheus.CounterValue,
						float64(cpu.Counters[s]), strconv.Itoa(cpu.CPU))
				}
			}
			continue
		}
		var sum uint64
		present := false
		for _, cpu := range cpus {
			sum += cpu.Counters[s]
			present = present || cpu.Present[s]
		}
		if present {
			ch <- prometheus.MustNewConstMetric(c.stats[s], prometheus.CounterValue, float64(sum))
		}
	}
}

// netlinkRefused reports whether err means this process may not use
// ctnetlink (no CAP_NET_ADMIN) or the kernel lacks it, so procfs should be
// read instead.
func netlinkRefused(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) ||
		errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP) ||
		errors.Is(err, unix.ENOENT)
}

// ctnetlink message types and per-CPU statistics attributes
// (include/uapi/linux/netfilter/nfnetlink_conntrack.h). ti-mo/conntrack's
// Stats omits CTA_STATS_CLASH_RESOLVE (kernel 5.10) and
// CTA_STATS_CHAIN_TOOLONG (5.15), so the statistics are requested here on
// ti-mo/netfilter directly.
const (
	ctnlMsgGetStatsCPU = 4
	ctnlMsgGetStats    = 5

	ctaStatsGlobalEntries    = 1
	ctaStatsGlobalMaxEntries = 2
)

var ctaStatsCPU = map[uint16]ConntrackStat{
	2:  StatFound,
	4:  StatInvalid,
	8:  StatInsert,
	9:  StatInsertFailed,
	10: StatDrop,
	11: StatEarlyDrop,
	12: StatError,
	13: StatSearchRestart,
	14: StatClashResolve,
	15: StatChainTooLong,
}

func readConntrackNetlink(ctx context.Context, netns int) (conntrackReading, error) {
	r := conntrackReading{source: "netlink"}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netns})
	if err != nil {
		return r, fmt.Errorf("dial netfilter netlink: %w", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return r, fmt.Errorf("set netlink deadline: %w", err)
		}
	}

	attrs, err := ctnetlinkGlobalStats(conn)
	if err != nil {
		return r, fmt.Errorf("get global conntrack stats: %w", err)
	}
	for _, a := range attrs {
		switch a.Type {
		case ctaStatsGlobalEntries:
			r.entries = uint64(a.Uint32())
		case ctaStatsGlobalMaxEntries:
			r.limit = uint64(a.Uint32())
		}
	}

	perCPU, err := conn.Execute(ctnetlinkRequest(ctnlMsgGetStatsCPU, netlink.Dump))
	if err != nil {
		return r, fmt.Errorf("get per-CPU conntrack stats: %w", err)
	}
	r.cpus = make([]ConntrackCPUStats, 0, len(perCPU))
	for _, m := range perCPU {
		h, attrs, err := netfilter.UnmarshalNetlink(m)
		if err != nil {
			return r, fmt.Errorf("decode per-CPU conntrack stats: %w", err)
		}
		cpu := ConntrackCPUStats{CPU: int(h.ResourceID)}
		for _, a := range attrs {
			if s, ok := ctaStatsCPU[a.Type]; ok {
				cpu.Counters[s] = uint64(a.Uint32())
				cpu.Present[s] = true
			}
		}
		r.cpus = append(r.cpus, cpu)
	}
	return r, nil
}

func ctnetlinkRequest(msgType uint8, flags netlink.HeaderFlags) netlink.Message {
	// MarshalNetlink fails only on attributes it cannot encode; there are none.
	m, _ := netfilter.MarshalNetlink(netfilter.Header{
		SubsystemID: netfilter.NFSubsysCTNetlink,
		MessageType: netfilter.MessageType(msgType),
		Family:      netfilter.ProtoUnspec,
		Flags:       netlink.Request | flags,
	}, nil)
	return m
}

// ctnetlinkGlobalStats asks for the table's entry count and limit.
//
// The kernel answers IPCTNL_MSG_CT_GET_STATS with a single message flagged
// NLM_F_MULTI but no NLMSG_DONE after it (ctnetlink_stat_ct_fill_info in
// net/netfilter/nf_conntrack_netlink.c). mdlayher/netlink's Receive then waits
// for more parts forever, which is why ti-mo/conntrack's StatsGlobal hangs
// (seen on 6.18 with mdlayher/netlink v1.11.2). So the one datagram of the
// answer is read here directly from the socket.
func ctnetlinkGlobalStats(conn *netlink.Conn) ([]netfilter.Attribute, error) {
	req, err := conn.Send(ctnetlinkRequest(ctnlMsgGetStats, 0))
	if err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("raw socket: %w", err)
	}
	buf := make([]byte, 4096)
	for range 16 { // skip stray datagrams (other sequence numbers), bounded
		var n int
		var rerr error
		if err := raw.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
			return !errors.Is(rerr, unix.EAGAIN)
		}); err != nil {
			return nil, fmt.Errorf("receive: %w", err)
		}
		if rerr != nil {
			return nil, fmt.Errorf("receive: %w", rerr)
		}
		msgs, err := splitNetlinkMessages(buf[:n])
		if err != nil {
			return nil, err
		}
		for _, m := range msgs {
			if m.Header.Sequence != req.Header.Sequence {
				continue
			}
			if m.Header.Type == netlink.Error {
				return nil, netlinkErrno(m)
			}
			_, attrs, err := netfilter.UnmarshalNetlink(m)
			if err != nil {
				return nil, fmt.Errorf("decode: %w", err)
			}
			return attrs, nil
		}
	}
	return nil, errors.New("no answer with the request's sequence number")
}

// splitNetlinkMessages splits one datagram into its netlink messages.
func splitNetlinkMessages(b []byte) ([]netlink.Message, error) {
	const hdrLen = 16
	var msgs []netlink.Message
	for len(b) >= hdrLen {
		l := int(binary.NativeEndian.Uint32(b[:4]))
		if l < hdrLen || l > len(b) {
			return nil, fmt.Errorf("netlink message length %d out of range (%d bytes left)", l, len(b))
		}
		var m netlink.Message
		if err := m.UnmarshalBinary(b[:l]); err != nil {
			return nil, fmt.Errorf("decode netlink message: %w", err)
		}
		msgs = append(msgs, m)
		aligned := (l + 3) &^ 3
		if aligned > len(b) {
			break
		}
		b = b[aligned:]
	}
	return msgs, nil
}

// netlinkErrno turns an NLMSG_ERROR message into the errno it carries.
func netlinkErrno(m netlink.Message) error {
	if len(m.Data) < 4 {
		return errors.New("short netlink error message")
	}
	code := int32(binary.NativeEndian.Uint32(m.Data[:4]))
	if code == 0 {
		return errors.New("unexpected netlink acknowledgement instead of data")
	}
	return unix.Errno(-code)
}

func readConntrackProcfs(procfs string) (conntrackReading, error) {
	r := conntrackReading{source: "procfs"}
	var err error
	if r.entries, err = readUintFile(filepath.Join(procfs, "sys/net/netfilter/nf_conntrack_count")); err != nil {
		return r, err
	}
	if r.limit, err = readUintFile(filepath.Join(procfs, "sys/net/netfilter/nf_conntrack_max")); err != nil {
		return r, err
	}
	path := filepath.Join(procfs, "net/stat/nf_conntrack")
	f, err := os.Open(path)
	if err != nil {
		return r, err
	}
	defer f.Close()
	if r.cpus, err = ParseProcConntrackStat(f); err != nil {
		return r, fmt.Errorf("parse %s: %w", path, err)
	}
	return r, nil
}

func readUintFile(path string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return v, nil
}
