package ipvs

import (
	"net/netip"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Virtual server flags (IP_VS_SVC_F_* in include/uapi/linux/ip_vs.h).
const (
	FlagPersistent = 0x1
	FlagOnePacket  = 0x4
	FlagSched1     = 0x8
	FlagSched2     = 0x10
	FlagSched3     = 0x20
)

// FlagNames names a virtual server's flags as ipvsadm -Ln prints them,
// comma separated; the scheduler flags are named after the sh and mh
// schedulers that define them. IP_VS_SVC_F_HASHED is left out: every
// virtual server in the table has it.
func FlagNames(flags uint32, sched string) string {
	var names []string
	if flags&FlagPersistent != 0 {
		names = append(names, "persistent")
	}
	if flags&FlagOnePacket != 0 {
		names = append(names, "ops")
	}
	schedNames := [3]string{"flag-1", "flag-2", "flag-3"}
	switch sched {
	case "sh":
		schedNames[0], schedNames[1] = "sh-fallback", "sh-port"
	case "mh":
		schedNames[0], schedNames[1] = "mh-fallback", "mh-port"
	}
	for i, f := range []uint32{FlagSched1, FlagSched2, FlagSched3} {
		if flags&f != 0 {
			names = append(names, schedNames[i])
		}
	}
	return strings.Join(names, ",")
}

// ForwardingFromProc is the forwarding method of a backend as
// /proc/net/ip_vs names it (ip_vs_fwd_name), in connection flags.
func ForwardingFromProc(name string) uint32 {
	switch name {
	case "Local":
		return 1
	case "Tunnel":
		return 2
	case "Route":
		return 3
	}
	return 0 // Masq (the file names bypass Masq too)
}

// ForwardingMethodName names a backend's forwarding method
// (IP_VS_CONN_F_FWD_MASK bits of its connection flags) as ipvsadm does, in
// lower case.
func ForwardingMethodName(fwd uint32) string {
	switch fwd & 0x7 {
	case 0:
		return "masq"
	case 1:
		return "local"
	case 2:
		return "tunnel"
	case 3:
		return "route"
	case 4:
		return "bypass"
	}
	return strconv.FormatUint(uint64(fwd&0x7), 10)
}

// ProcKey identifies a virtual server in /proc/net/ip_vs.
type ProcKey struct {
	Protocol string // as the file prints it: TCP, UDP, SCTP
	Addr     netip.Addr
	Port     uint16
}

// ProcKeyOf is the key of a virtual server read over netlink.
func ProcKeyOf(s *Service) ProcKey {
	var p string
	switch s.Protocol {
	case unix.IPPROTO_TCP:
		p = "TCP"
	case unix.IPPROTO_UDP:
		p = "UDP"
	case unix.IPPROTO_SCTP:
		p = "SCTP"
	}
	return ProcKey{Protocol: p, Addr: s.Addr, Port: s.Port}
}

// Key is the key of a virtual server read from /proc/net/ip_vs.
func (s *ProcService) Key() ProcKey {
	return ProcKey{Protocol: s.Protocol, Addr: s.Addr, Port: s.Port}
}
