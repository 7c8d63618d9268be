// Package ipvs reads the IPVS virtual servers and backends of a network
// namespace: over generic netlink (family IPVS, what ipvsadm -Ln --stats
// asks) and from /proc/net/ip_vs, which lists every backend in one read.
// It never loads a kernel module.
package ipvs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/netinspect/netinspect/source"
	"github.com/netinspect/netinspect/source/netlinkattr"
	"github.com/netinspect/netinspect/source/netns"
)

// IPVS generic netlink interface (include/uapi/linux/ip_vs.h). Read here
// directly rather than through moby/ipvs, whose New runs `modprobe -va ip_vs`
// (netlink_linux.go, v1.1.0) and caches the family ID in a package global on
// first use: the exporter must never load a kernel module.
const (
	ipvsGenlName    = "IPVS"
	ipvsGenlVersion = 1

	ipvsCmdGetService = 4
	ipvsCmdGetDest    = 8

	ipvsCmdAttrService = 1
	ipvsCmdAttrDest    = 2

	ipvsSvcAttrAF        = 1
	ipvsSvcAttrProtocol  = 2
	ipvsSvcAttrAddr      = 3
	ipvsSvcAttrPort      = 4
	ipvsSvcAttrFWMark    = 5
	ipvsSvcAttrSchedName = 6
	ipvsSvcAttrFlags     = 7
	ipvsSvcAttrTimeout   = 8
	ipvsSvcAttrStats     = 10
	ipvsSvcAttrStats64   = 12

	ipvsDestAttrAddr         = 1
	ipvsDestAttrPort         = 2
	ipvsDestAttrFwdMethod    = 3
	ipvsDestAttrWeight       = 4
	ipvsDestAttrActiveConns  = 7
	ipvsDestAttrInactConns   = 8
	ipvsDestAttrPersistConns = 9
	ipvsDestAttrStats        = 10
	ipvsDestAttrAddrFamily   = 11
	ipvsDestAttrStats64      = 12

	ipvsStatsAttrConns    = 1
	ipvsStatsAttrInPkts   = 2
	ipvsStatsAttrOutPkts  = 3
	ipvsStatsAttrInBytes  = 4
	ipvsStatsAttrOutBytes = 5
)

// Stats are the cumulative counters of a virtual server or a backend.
type Stats struct {
	Conns, InPkts, OutPkts, InBytes, OutBytes uint64
}

// Address families of Service.Family.
const (
	FamilyIPv4 = unix.AF_INET
	FamilyIPv6 = unix.AF_INET6
)

// Service is one IPVS virtual server.
type Service struct {
	Family   uint16 // FamilyIPv4 or FamilyIPv6
	Protocol uint16 // IP protocol number; 0 for fwmark services
	Addr     netip.Addr
	Port     uint16
	FWMark   uint32
	Sched    string
	Flags    uint32
	Timeout  uint32 // persistence timeout in seconds
	Stats    Stats
}

// Dest is one backend (real server) of a virtual server.
type Dest struct {
	Addr                      netip.Addr
	Port                      uint16
	FwdMethod                 uint32
	Weight                    uint32
	Active, Inactive, Persist uint32
	Stats                     Stats
}

// Reader holds one generic netlink connection for one reading.
type Reader struct {
	conn   *genetlink.Conn
	family uint16
}

// CheckLoaded returns an error matching source.ErrAbsent when the procfs at
// procfs has no net/ip_vs: the ip_vs module is not loaded. Checking it first
// keeps a reader from asking generic netlink for the family, which on a
// modular kernel may make the kernel try to load a module.
func CheckLoaded(procfs string) error {
	path := filepath.Join(procfs, "net/ip_vs")
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return source.Absentf("%s absent, ip_vs is not loaded", path)
	}
	return nil
}

// Dial opens a generic netlink connection in target and resolves the IPVS
// family; an error matching source.ErrAbsent says the kernel has none. The
// deadline of ctx bounds every call.
func Dial(ctx context.Context, target netns.Target) (*Reader, error) {
	// A pooled receive buffer saves the MSG_PEEK recvmsg mdlayher/netlink
	// otherwise makes to size each datagram: one syscall of the five per
	// virtual server. Kernel dump datagrams stay under 32 KiB.
	conn, err := genetlink.Dial(&netlink.Config{NetNS: target.FD(), MessageBufferSize: 64 * 1024})
	if err != nil {
		return nil, fmt.Errorf("dial generic netlink: %w", err)
	}
	if dl, ok := ctx.Deadline(); ok {
		if err := conn.SetDeadline(dl); err != nil {
			conn.Close()
			return nil, fmt.Errorf("set netlink deadline: %w", err)
		}
	}
	fam, err := conn.GetFamily(ipvsGenlName)
	if err != nil {
		conn.Close()
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOENT) {
			return nil, source.Absentf("IPVS generic netlink family absent (ip_vs not loaded)")
		}
		return nil, fmt.Errorf("resolve generic netlink family %s: %w", ipvsGenlName, err)
	}
	return &Reader{conn: conn, family: fam.ID}, nil
}

// Close closes the connection.
func (r *Reader) Close() error { return r.conn.Close() }

// Services dumps every virtual server.
func (r *Reader) Services() ([]Service, error) {
	msgs, err := r.conn.Execute(genetlink.Message{
		Header: genetlink.Header{Command: ipvsCmdGetService, Version: ipvsGenlVersion},
	}, r.family, netlink.Request|netlink.Dump)
	if err != nil {
		return nil, fmt.Errorf("dump IPVS services: %w", err)
	}
	out := make([]Service, 0, len(msgs))
	for _, m := range msgs {
		svc, err := ParseService(m.Data)
		if err != nil {
			return nil, fmt.Errorf("decode IPVS service: %w", err)
		}
		out = append(out, svc)
	}
	return out, nil
}

// Dests dumps the backends of one virtual server. The kernel has no dump of
// all backends at once: IPVS_CMD_GET_DEST needs the service (ipvsadm -Ln
// asks once per service too).
func (r *Reader) Dests(svc *Service, buf []Dest) ([]Dest, error) {
	attrs := svc.identity()
	msgs, err := r.conn.Execute(genetlink.Message{
		Header: genetlink.Header{Command: ipvsCmdGetDest, Version: ipvsGenlVersion},
		Data:   attrs,
	}, r.family, netlink.Request|netlink.Dump)
	if err != nil {
		return buf, fmt.Errorf("dump IPVS backends of %s: %w", svc, err)
	}
	for _, m := range msgs {
		d, err := ParseDest(m.Data, svc.Family)
		if err != nil {
			return buf, fmt.Errorf("decode IPVS backend of %s: %w", svc, err)
		}
		buf = append(buf, d)
	}
	return buf, nil
}

// ParseService decodes the payload (after the generic netlink header) of
// one answer to IPVS_CMD_GET_SERVICE.
func ParseService(payload []byte) (Service, error) {
	var svc Service
	err := netlinkattr.Walk(payload, func(typ uint16, b []byte) error {
		if typ != ipvsCmdAttrService {
			return nil
		}
		return netlinkattr.Walk(b, svc.decodeAttr)
	})
	return svc, err
}

// ParseDest decodes the payload of one answer to IPVS_CMD_GET_DEST about a
// virtual server of family.
func ParseDest(payload []byte, family uint16) (Dest, error) {
	d := Dest{}
	err := netlinkattr.Walk(payload, func(typ uint16, b []byte) error {
		if typ != ipvsCmdAttrDest {
			return nil
		}
		// IPVS_DEST_ATTR_ADDR_FAMILY (kernel 4.x+) comes after the
		// address, so the address is decoded once the family is known.
		var rawAddr []byte
		if err := netlinkattr.Walk(b, func(typ uint16, b []byte) error {
			switch typ {
			case ipvsDestAttrAddr:
				rawAddr = b
			case ipvsDestAttrAddrFamily:
				if len(b) >= 2 {
					family = netlinkattr.Uint16(b)
				}
			default:
				d.decodeAttr(typ, b)
			}
			return nil
		}); err != nil {
			return err
		}
		d.Addr = netlinkattr.InetAddr(family, rawAddr)
		return nil
	})
	return d, err
}

func (s *Service) String() string {
	if s.FWMark != 0 {
		return fmt.Sprintf("fwmark %d", s.FWMark)
	}
	return fmt.Sprintf("%s %s", protocolName(s.Protocol), netip.AddrPortFrom(s.Addr, s.Port))
}

// identity encodes the attributes that name the service in a request:
// the family and either the fwmark or protocol, address and port.
func (s *Service) identity() []byte {
	inner := make([]byte, 0, 48)
	inner = netlinkattr.AppendUint16(inner, ipvsSvcAttrAF, s.Family)
	if s.FWMark != 0 {
		inner = netlinkattr.AppendUint32(inner, ipvsSvcAttrFWMark, s.FWMark)
	} else {
		inner = netlinkattr.AppendUint16(inner, ipvsSvcAttrProtocol, s.Protocol)
		inner = netlinkattr.Append(inner, ipvsSvcAttrAddr, netlinkattr.AppendInetAddr(nil, s.Addr))
		inner = netlinkattr.AppendBE16(inner, ipvsSvcAttrPort, s.Port)
	}
	return netlinkattr.Append(nil, ipvsCmdAttrService|netlink.Nested, inner)
}

func (s *Service) decodeAttr(typ uint16, b []byte) error {
	switch typ {
	case ipvsSvcAttrAF:
		s.Family = netlinkattr.Uint16(b)
	case ipvsSvcAttrProtocol:
		s.Protocol = netlinkattr.Uint16(b)
	case ipvsSvcAttrAddr:
		// The family attribute comes first (ip_vs_genl_fill_service).
		s.Addr = netlinkattr.InetAddr(s.Family, b)
	case ipvsSvcAttrPort:
		if len(b) >= 2 {
			s.Port = netlinkattr.BE16(b)
		}
	case ipvsSvcAttrFWMark:
		s.FWMark = netlinkattr.Uint32(b)
	case ipvsSvcAttrSchedName:
		s.Sched = netlinkattr.String(b)
	case ipvsSvcAttrFlags:
		s.Flags = netlinkattr.Uint32(b) // struct ip_vs_flags{flags, mask}
	case ipvsSvcAttrTimeout:
		s.Timeout = netlinkattr.Uint32(b)
	case ipvsSvcAttrStats:
		if s.Stats == (Stats{}) {
			return netlinkattr.Walk(b, s.Stats.decode32)
		}
	case ipvsSvcAttrStats64:
		return netlinkattr.Walk(b, s.Stats.decode64)
	}
	return nil
}

func (d *Dest) decodeAttr(typ uint16, b []byte) {
	switch typ {
	case ipvsDestAttrPort:
		if len(b) >= 2 {
			d.Port = netlinkattr.BE16(b)
		}
	case ipvsDestAttrFwdMethod:
		d.FwdMethod = netlinkattr.Uint32(b)
	case ipvsDestAttrWeight:
		d.Weight = netlinkattr.Uint32(b)
	case ipvsDestAttrActiveConns:
		d.Active = netlinkattr.Uint32(b)
	case ipvsDestAttrInactConns:
		d.Inactive = netlinkattr.Uint32(b)
	case ipvsDestAttrPersistConns:
		d.Persist = netlinkattr.Uint32(b)
	case ipvsDestAttrStats:
		if d.Stats == (Stats{}) {
			_ = netlinkattr.Walk(b, d.Stats.decode32)
		}
	case ipvsDestAttrStats64:
		d.Stats = Stats{}
		_ = netlinkattr.Walk(b, d.Stats.decode64)
	}
}

// decode32 reads IPVS_SVC_ATTR_STATS: connections and packets are u32
// there, bytes u64. STATS64 (kernel 4.1+) is preferred when present.
func (s *Stats) decode32(typ uint16, b []byte) error { s.decode(typ, b, false); return nil }

// decode64 reads IPVS_SVC_ATTR_STATS64, where every counter is u64.
func (s *Stats) decode64(typ uint16, b []byte) error { s.decode(typ, b, true); return nil }

func (s *Stats) decode(typ uint16, b []byte, wide bool) {
	count := uint64(netlinkattr.Uint32(b))
	if wide {
		count = netlinkattr.Uint64(b)
	}
	switch typ {
	case ipvsStatsAttrConns:
		s.Conns = count
	case ipvsStatsAttrInPkts:
		s.InPkts = count
	case ipvsStatsAttrOutPkts:
		s.OutPkts = count
	case ipvsStatsAttrInBytes:
		s.InBytes = netlinkattr.Uint64(b)
	case ipvsStatsAttrOutBytes:
		s.OutBytes = netlinkattr.Uint64(b)
	}
}

// protocolName is the lower-case name of an IP protocol number.
func protocolName(p uint16) string {
	switch p {
	case unix.IPPROTO_TCP:
		return "tcp"
	case unix.IPPROTO_UDP:
		return "udp"
	case unix.IPPROTO_SCTP:
		return "sctp"
	}
	return fmt.Sprintf("%d", p)
}
