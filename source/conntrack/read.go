package conntrack

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

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/source"
	"github.com/netinspect/netinspect/source/netlinkattr"
	"github.com/netinspect/netinspect/source/netns"
)

// Reading is one reading of the table's size, limit and statistics,
// whichever source it came from.
type Reading struct {
	// Source is "netlink" or "procfs".
	Source         string
	Entries, Limit uint64
	CPUs           []CPUStats
}

// CheckTable returns an error matching source.ErrAbsent when the kernel of
// the procfs at procfs has no conntrack table. Without the nf_conntrack
// module there is no nf_conntrack_max sysctl; checking it first keeps a
// reader from asking netlink, which on modular kernels would make the kernel
// try to load ctnetlink.
func CheckTable(procfs string) error {
	maxPath := filepath.Join(procfs, "sys/net/netfilter/nf_conntrack_max")
	if _, err := os.Stat(maxPath); errors.Is(err, fs.ErrNotExist) {
		return source.Absentf("%s absent, nf_conntrack is not loaded", maxPath)
	}
	return nil
}

// Refused reports whether err means this process may not use ctnetlink (no
// CAP_NET_ADMIN) or the kernel lacks it, so procfs should be read instead.
func Refused(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) ||
		errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP) ||
		errors.Is(err, unix.ENOENT)
}

// NetlinkAbsent reports whether err from a dump or a subscription means the
// kernel has no ctnetlink.
func NetlinkAbsent(err error) bool {
	return errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP)
}

// ctnetlink message types and statistics attributes
// (include/uapi/linux/netfilter/nfnetlink_conntrack.h). ti-mo/conntrack's
// Stats omits CTA_STATS_CLASH_RESOLVE (kernel 5.10) and
// CTA_STATS_CHAIN_TOOLONG (5.15), so the statistics are requested here
// directly.
const (
	ctnlMsgGetStatsCPU = 4
	ctnlMsgGetStats    = 5

	ctaStatsGlobalEntries    = 1
	ctaStatsGlobalMaxEntries = 2
)

var ctaStatsCPU = map[uint16]Stat{
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

// ReadNetlink reads the table's size, limit and per-CPU statistics of
// target through ctnetlink, bounded by ctx's deadline.
func ReadNetlink(ctx context.Context, target netns.Target) (Reading, error) {
	r := Reading{Source: "netlink"}
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: target.FD()})
	if err != nil {
		return r, fmt.Errorf("dial netfilter netlink: %w", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			return r, fmt.Errorf("set netlink deadline: %w", err)
		}
	}

	global, err := globalStats(conn)
	if err != nil {
		return r, fmt.Errorf("get global conntrack stats: %w", err)
	}
	if r.Entries, r.Limit, err = ParseGlobalStats(global); err != nil {
		return r, fmt.Errorf("decode global conntrack stats: %w", err)
	}

	perCPU, err := conn.Execute(statsRequest(ctnlMsgGetStatsCPU, netlink.Dump))
	if err != nil {
		return r, fmt.Errorf("get per-CPU conntrack stats: %w", err)
	}
	r.CPUs = make([]CPUStats, 0, len(perCPU))
	for _, m := range perCPU {
		cpu, err := ParseCPUStats(m.Data)
		if err != nil {
			return r, fmt.Errorf("decode per-CPU conntrack stats: %w", err)
		}
		r.CPUs = append(r.CPUs, cpu)
	}
	return r, nil
}

// ParseGlobalStats decodes the payload (nfgenmsg and attributes) of the
// answer to IPCTNL_MSG_CT_GET_STATS: the table's entries and limit.
func ParseGlobalStats(payload []byte) (entries, limit uint64, err error) {
	if len(payload) < netlinkattr.NfgenLen {
		return 0, 0, fmt.Errorf("%w: statistics message of %d bytes", ErrMalformed, len(payload))
	}
	a := netlinkattr.NewAttrs(payload[netlinkattr.NfgenLen:])
	for a.Next() {
		switch a.Type() {
		case ctaStatsGlobalEntries:
			entries = uint64(netlinkattr.BE32(a.Value()))
		case ctaStatsGlobalMaxEntries:
			limit = uint64(netlinkattr.BE32(a.Value()))
		}
	}
	return entries, limit, malformed(&a)
}

// ParseCPUStats decodes the payload of one answer to
// IPCTNL_MSG_CT_GET_STATS_CPU: the CPU is the nfgenmsg's resource id.
func ParseCPUStats(payload []byte) (CPUStats, error) {
	var cpu CPUStats
	if len(payload) < netlinkattr.NfgenLen {
		return cpu, fmt.Errorf("%w: per-CPU statistics message of %d bytes", ErrMalformed, len(payload))
	}
	cpu.CPU = int(binary.BigEndian.Uint16(payload[2:4]))
	a := netlinkattr.NewAttrs(payload[netlinkattr.NfgenLen:])
	for a.Next() {
		if s, ok := ctaStatsCPU[a.Type()]; ok {
			cpu.Counters[s] = uint64(netlinkattr.BE32(a.Value()))
			cpu.Present[s] = true
		}
	}
	return cpu, malformed(&a)
}

func statsRequest(msgType uint8, flags netlink.HeaderFlags) netlink.Message {
	return netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(nfnlSubsysCTNetlink<<8 | uint16(msgType)),
			Flags: netlink.Request | flags,
		},
		// struct nfgenmsg: AF_UNSPEC, NFNETLINK_V0, res_id 0.
		Data: []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	}
}

// globalStats asks for the table's entry count and limit and returns the
// answer's payload.
//
// The kernel answers IPCTNL_MSG_CT_GET_STATS with a single message flagged
// NLM_F_MULTI but no NLMSG_DONE after it (ctnetlink_stat_ct_fill_info in
// net/netfilter/nf_conntrack_netlink.c). mdlayher/netlink's Receive then waits
// for more parts forever, which is why ti-mo/conntrack's StatsGlobal hangs
// (seen on 6.18 with mdlayher/netlink v1.11.2). So the one datagram of the
// answer is read here directly from the socket.
func globalStats(conn *netlink.Conn) ([]byte, error) {
	req, err := conn.Send(statsRequest(ctnlMsgGetStats, 0))
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
		msgs := netlinkattr.NewMessages(buf[:n])
		for msgs.Next() {
			h := msgs.Header()
			if h.Seq != req.Header.Sequence {
				continue
			}
			if h.Type == unix.NLMSG_ERROR {
				err := netlinkattr.Errno(msgs.Payload())
				if err == nil {
					err = errors.New("unexpected netlink acknowledgement instead of data")
				}
				return nil, err
			}
			return msgs.Payload(), nil
		}
		if err := msgs.Err(); err != nil {
			return nil, err
		}
	}
	return nil, errors.New("no answer with the request's sequence number")
}

// ReadProcfs reads the table's size and limit from the nf_conntrack_count
// and nf_conntrack_max sysctls and the statistics from
// /proc/net/stat/nf_conntrack, under the procfs mounted at procfs: what
// node_exporter reads, for a process without CAP_NET_ADMIN.
func ReadProcfs(procfs string) (Reading, error) {
	r := Reading{Source: "procfs"}
	var err error
	if r.Entries, err = readUintFile(filepath.Join(procfs, "sys/net/netfilter/nf_conntrack_count")); err != nil {
		return r, err
	}
	if r.Limit, err = readUintFile(filepath.Join(procfs, "sys/net/netfilter/nf_conntrack_max")); err != nil {
		return r, err
	}
	path := filepath.Join(procfs, "net/stat/nf_conntrack")
	f, err := os.Open(path)
	if err != nil {
		return r, err
	}
	defer f.Close()
	if r.CPUs, err = ParseProcStat(f); err != nil {
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

// malformed wraps an error of the attribute iterator with ErrMalformed.
func malformed(a *netlinkattr.Attrs) error {
	if err := a.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	return nil
}
