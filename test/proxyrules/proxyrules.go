// Package proxyrules writes rules shaped like the ones kube-proxy 1.37 programs
// (iptables-restore input and nft -f input), for tests and benchmarks that
// load them into a throw-away network namespace when running the real
// kube-proxy is too slow (thousands of services) or not possible.
//
// The shapes follow pkg/proxy/iptables and pkg/proxy/nftables of
// Kubernetes 1.37: chain names, comments, and the "large cluster" mode that
// drops per-endpoint comments above 1,000 endpoints.
package proxyrules

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Service is one service port and its endpoints.
type Service struct {
	Namespace, Name, PortName string
	Protocol                  string // lower case
	Port                      int
	ClusterIP                 netip.Addr
	NodePort                  int
	ExternalIPs               []netip.Addr
	LoadBalancerIPs           []netip.Addr
	SessionAffinity           bool
	// Endpoints are "ip:port" / "[ip6]:port"; none makes kube-proxy reject.
	Endpoints []netip.AddrPort
}

func (s Service) portName() string {
	if s.PortName == "" {
		return s.Namespace + "/" + s.Name
	}
	return s.Namespace + "/" + s.Name + ":" + s.PortName
}

func hash16(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:16]
}

func hash8(s string) string {
	sum := sha256.Sum256([]byte(s))
	return base32.StdEncoding.EncodeToString(sum[:])[:8]
}

// Generate returns n ClusterIP services with eps endpoints each, in
// namespace ns, for family 4 or 6.
func Generate(ns string, n, eps, family int) []Service {
	out := make([]Service, 0, n)
	for i := range n {
		s := Service{
			Namespace: ns, Name: "svc-" + strconv.Itoa(i), PortName: "http", Protocol: "tcp", Port: 80,
			ClusterIP: addr(family, 0x60, i),
		}
		for e := range eps {
			s.Endpoints = append(s.Endpoints, netip.AddrPortFrom(addr(family, 0xb4, i*eps+e), 8080))
		}
		out = append(out, s)
	}
	return out
}

// addr is the i-th address of a range: 10.<net>.0.0/16 and the next ones
// (fd00:0:0:<net>::/64) for more than 65,536.
func addr(family int, net byte, i int) netip.Addr {
	if family == 6 {
		return netip.AddrFrom16([16]byte{0xfd, 0, 0, net, 13: byte(i >> 16), 14: byte(i >> 8), 15: byte(i)})
	}
	return netip.AddrFrom4([4]byte{10, net + byte(i>>16), byte(i >> 8), byte(i)})
}

// IPTablesRestore returns iptables-restore input for the services, as
// kube-proxy in iptables mode writes it for one family. Above 1,000
// endpoints in total the per-endpoint comments are dropped, as kube-proxy
// does (largeClusterEndpointsThreshold).
func IPTablesRestore(svcs []Service, family int) []byte {
	total := 0
	for _, s := range svcs {
		total += len(s.Endpoints)
	}
	large := total > 1000
	host := "/32"
	podCIDR := "10.0.0.0/8"
	if family == 6 {
		host = "/128"
		podCIDR = "fd00::/8"
	}
	var b bytes.Buffer
	b.WriteString("*mangle\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n")

	// filter
	b.WriteString("*filter\n:KUBE-PROXY-CANARY - [0:0]\n:KUBE-EXTERNAL-SERVICES - [0:0]\n:KUBE-FIREWALL - [0:0]\n:KUBE-FORWARD - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-PROXY-FIREWALL - [0:0]\n:KUBE-SERVICES - [0:0]\n")
	for _, s := range svcs {
		if len(s.Endpoints) > 0 {
			continue
		}
		fmt.Fprintf(&b, "-A KUBE-SERVICES -d %s%s -p %s -m comment --comment \"%s has no endpoints\" -m %s --dport %d -j REJECT --reject-with icmp%s-port-unreachable\n",
			s.ClusterIP, host, s.Protocol, s.portName(), s.Protocol, s.Port, map[int]string{4: "", 6: "6"}[family])
	}
	b.WriteString("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n")
	b.WriteString("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n")
	b.WriteString("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n")
	b.WriteString("COMMIT\n")

	// nat
	b.WriteString("*nat\n:KUBE-PROXY-CANARY - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-SERVICES - [0:0]\n")
	var rules bytes.Buffer
	for _, s := range svcs {
		if len(s.Endpoints) == 0 {
			continue
		}
		name := s.portName()
		h := hash16(name + s.Protocol)
		svc := "KUBE-SVC-" + h
		ext := "KUBE-EXT-" + h
		fmt.Fprintf(&b, ":%s - [0:0]\n", svc)
		hasExt := s.NodePort != 0 || len(s.ExternalIPs) > 0 || len(s.LoadBalancerIPs) > 0
		if hasExt {
			fmt.Fprintf(&b, ":%s - [0:0]\n", ext)
		}
		fmt.Fprintf(&rules, "-A KUBE-SERVICES -d %s%s -p %s -m comment --comment \"%s cluster IP\" -m %s --dport %d -j %s\n",
			s.ClusterIP, host, s.Protocol, name, s.Protocol, s.Port, svc)
		for _, ip := range s.ExternalIPs {
			fmt.Fprintf(&rules, "-A KUBE-SERVICES -d %s%s -p %s -m comment --comment \"%s external IP\" -m %s --dport %d -j %s\n",
				ip, host, s.Protocol, name, s.Protocol, s.Port, ext)
		}
		for _, ip := range s.LoadBalancerIPs {
			fmt.Fprintf(&rules, "-A KUBE-SERVICES -d %s%s -p %s -m comment --comment \"%s loadbalancer IP\" -m %s --dport %d -j %s\n",
				ip, host, s.Protocol, name, s.Protocol, s.Port, ext)
		}
		if s.NodePort != 0 {
			fmt.Fprintf(&rules, "-A KUBE-NODEPORTS -p %s -m comment --comment %s -m %s --dport %d -j %s\n",
				s.Protocol, name, s.Protocol, s.NodePort, ext)
		}
		if hasExt {
			fmt.Fprintf(&rules, "-A %s -m comment --comment \"masquerade traffic for %s external destinations\" -j KUBE-MARK-MASQ\n", ext, name)
			fmt.Fprintf(&rules, "-A %s -j %s\n", ext, svc)
		}
		fmt.Fprintf(&rules, "-A %s ! -s %s -d %s%s -p %s -m comment --comment \"%s cluster IP\" -m %s --dport %d -j KUBE-MARK-MASQ\n",
			svc, podCIDR, s.ClusterIP, host, s.Protocol, name, s.Protocol, s.Port)
		seps := make([]string, len(s.Endpoints))
		for i, ep := range s.Endpoints {
			seps[i] = "KUBE-SEP-" + hash16(name+s.Protocol+ep.String())
		}
		comment := func(text string) string {
			if large {
				return ""
			}
			return " -m comment --comment " + text
		}
		if s.SessionAffinity {
			for i, ep := range s.Endpoints {
				fmt.Fprintf(&rules, "-A %s%s -m recent --rcheck --seconds 10800 --reap --name %s --mask %s --rsource -j %s\n",
					svc, comment(strconv.Quote(name+" -> "+ep.String())), seps[i], fullMask(family), seps[i])
			}
		}
		for i, ep := range s.Endpoints {
			prob := ""
			if i < len(s.Endpoints)-1 {
				prob = fmt.Sprintf(" -m statistic --mode random --probability %.11f", 1.0/float64(len(s.Endpoints)-i))
			}
			fmt.Fprintf(&rules, "-A %s%s%s -j %s\n", svc, comment(strconv.Quote(name+" -> "+ep.String())), prob, seps[i])
		}
		for i, ep := range s.Endpoints {
			fmt.Fprintf(&b, ":%s - [0:0]\n", seps[i])
			fmt.Fprintf(&rules, "-A %s -s %s%s%s -j KUBE-MARK-MASQ\n", seps[i], ep.Addr(), host, comment(name))
			recent := ""
			if s.SessionAffinity {
				recent = fmt.Sprintf(" -m recent --set --name %s --mask %s --rsource", seps[i], fullMask(family))
			}
			fmt.Fprintf(&rules, "-A %s -p %s%s%s -m %s -j DNAT --to-destination %s\n", seps[i], s.Protocol, comment(name), recent, s.Protocol, ep)
		}
	}
	b.Write(rules.Bytes())
	b.WriteString("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n")
	b.WriteString("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n")
	b.WriteString("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n")
	b.WriteString("-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n")
	b.WriteString("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n")
	b.WriteString("COMMIT\n")
	return b.Bytes()
}

func fullMask(family int) string {
	if family == 6 {
		return "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
	}
	return "255.255.255.255"
}

// NFTables returns nft -f input creating table "ip kube-proxy" (family 4)
// or "ip6 kube-proxy" (family 6) with the services, shaped like kube-proxy's
// nftables mode: the fixed chains, sets and maps, one service- chain per
// service port with endpoints, and map elements in service-ips,
// service-nodeports and no-endpoint-services. Endpoints get endpoint-
// chains reached through "numgen random mod N vmap": the layout kube-proxy
// 1.37 keeps for services with session affinity (without it, 1.37 DNATs
// from the service chain directly: NFTablesDNAT).
func NFTables(svcs []Service, family int) []byte { return nftables(svcs, family, false) }

// NFTablesDNAT is NFTables with kube-proxy 1.37's layout for services
// without session affinity: the service chain DNATs itself, "dnat ip addr
// . port to numgen random mod N map { ... }" (an anonymous map per
// service), or "dnat to ip:port" for one endpoint
// (writeServiceToEndpointDNATs).
func NFTablesDNAT(svcs []Service, family int) []byte { return nftables(svcs, family, true) }

func nftables(svcs []Service, family int, dnat bool) []byte {
	fam, addrType, ipKw, loop, pods := "ip", "ipv4_addr", "ip", "127.0.0.0/8", "10.0.0.0/8"
	if family == 6 {
		fam, addrType, ipKw, loop, pods = "ip6", "ipv6_addr", "ip6", "::1", "fd00::/8"
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "add table %s kube-proxy { comment \"rules for kube-proxy\" ; }\n", fam)
	t := fam + " kube-proxy"
	for _, c := range []string{"nat-prerouting { type nat hook prerouting priority dstnat ; }",
		"nat-output { type nat hook output priority -100 ; }",
		"nat-postrouting { type nat hook postrouting priority srcnat ; }",
		"filter-input { type filter hook input priority -110 ; }",
		"filter-forward { type filter hook forward priority -110 ; }",
		"services", "masquerading", "mark-for-masquerade", "service-endpoints-check", "nodeport-endpoints-check",
		"reject-chain", "firewall-check", "cluster-ips-check", "nodeports"} {
		fmt.Fprintf(&b, "add chain %s %s\n", t, c)
	}
	fmt.Fprintf(&b, "add set %s cluster-ips { type %s ; comment \"Active ClusterIPs\" ; }\n", t, addrType)
	fmt.Fprintf(&b, "add set %s nodeport-ips { type %s ; comment \"IPs that accept NodePort traffic\" ; }\n", t, addrType)
	fmt.Fprintf(&b, "add map %s service-ips { type %s . inet_proto . inet_service : verdict ; comment \"ClusterIP, ExternalIP and LoadBalancer IP traffic\" ; }\n", t, addrType)
	fmt.Fprintf(&b, "add map %s service-nodeports { type inet_proto . inet_service : verdict ; comment \"NodePort traffic\" ; }\n", t)
	fmt.Fprintf(&b, "add map %s no-endpoint-services { type %s . inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to services with no endpoints\" ; }\n", t, addrType)
	fmt.Fprintf(&b, "add map %s no-endpoint-nodeports { type inet_proto . inet_service : verdict ; comment \"vmap to drop or reject packets to service nodeports with no endpoints\" ; }\n", t)
	fmt.Fprintf(&b, "add map %s firewall-ips { type %s . inet_proto . inet_service : verdict ; comment \"destinations that are subject to LoadBalancerSourceRanges\" ; }\n", t, addrType)
	fmt.Fprintf(&b, "add rule %s nat-prerouting jump services\n", t)
	fmt.Fprintf(&b, "add rule %s nat-output jump services\n", t)
	fmt.Fprintf(&b, "add rule %s nat-postrouting jump masquerading\n", t)
	fmt.Fprintf(&b, "add rule %s filter-input ct state new jump service-endpoints-check\n", t)
	fmt.Fprintf(&b, "add rule %s filter-forward ct state new jump service-endpoints-check\n", t)
	fmt.Fprintf(&b, "add rule %s masquerading meta mark & 0x4000 == 0 return\n", t)
	fmt.Fprintf(&b, "add rule %s masquerading meta mark set meta mark ^ 0x4000\n", t)
	fmt.Fprintf(&b, "add rule %s masquerading masquerade fully-random\n", t)
	fmt.Fprintf(&b, "add rule %s mark-for-masquerade meta mark set meta mark or 0x4000\n", t)
	fmt.Fprintf(&b, "add rule %s services %s daddr . meta l4proto . th dport vmap @service-ips\n", t, ipKw)
	fmt.Fprintf(&b, "add rule %s services fib daddr type local %s daddr != %s meta l4proto . th dport vmap @service-nodeports\n", t, ipKw, loop)
	fmt.Fprintf(&b, "add rule %s service-endpoints-check %s daddr . meta l4proto . th dport vmap @no-endpoint-services\n", t, ipKw)
	fmt.Fprintf(&b, "add rule %s reject-chain reject\n", t)
	for _, s := range svcs {
		fmt.Fprintf(&b, "add element %s cluster-ips { %s }\n", t, s.ClusterIP)
		base := fmt.Sprintf("%s/%s/%s/%s", s.Namespace, s.Name, s.Protocol, s.PortName)
		if len(s.Endpoints) == 0 {
			fmt.Fprintf(&b, "add element %s no-endpoint-services { %s . %s . %d comment %q : goto reject-chain }\n",
				t, s.ClusterIP, s.Protocol, s.Port, s.portName())
			continue
		}
		svc := "service-" + hash8(base) + "-" + base
		fmt.Fprintf(&b, "add chain %s %s\n", t, svc)
		fmt.Fprintf(&b, "add rule %s %s %s daddr %s %s dport %d %s saddr != %s jump mark-for-masquerade\n",
			t, svc, ipKw, s.ClusterIP, s.Protocol, s.Port, ipKw, pods)
		if dnat && !s.SessionAffinity {
			if len(s.Endpoints) == 1 {
				fmt.Fprintf(&b, "add rule %s %s meta l4proto %s dnat to %s\n", t, svc, s.Protocol, s.Endpoints[0])
			} else {
				var m []string
				for i, ep := range s.Endpoints {
					m = append(m, fmt.Sprintf("%d : %s . %d", i, ep.Addr(), ep.Port()))
				}
				fmt.Fprintf(&b, "add rule %s %s meta l4proto %s dnat %s addr . port to numgen random mod %d map { %s }\n",
					t, svc, s.Protocol, ipKw, len(s.Endpoints), strings.Join(m, " , "))
			}
			nftServiceElements(&b, t, s, svc)
			continue
		}
		eps := make([]string, len(s.Endpoints))
		for i, ep := range s.Endpoints {
			ip := strings.ReplaceAll(ep.Addr().String(), ":", ".")
			ebase := fmt.Sprintf("%s__%s/%d", base, ip, ep.Port())
			eps[i] = "endpoint-" + hash8(ebase) + "-" + ebase
			fmt.Fprintf(&b, "add chain %s %s\n", t, eps[i])
			fmt.Fprintf(&b, "add rule %s %s %s saddr %s jump mark-for-masquerade\n", t, eps[i], ipKw, ep.Addr())
			fmt.Fprintf(&b, "add rule %s %s meta l4proto %s dnat to %s\n", t, eps[i], s.Protocol, ep)
		}
		var vm []string
		for i := range eps {
			vm = append(vm, fmt.Sprintf("%d : goto %s", i, eps[i]))
		}
		fmt.Fprintf(&b, "add rule %s %s numgen random mod %d vmap { %s }\n", t, svc, len(eps), strings.Join(vm, " , "))
		nftServiceElements(&b, t, s, svc)
	}
	return b.Bytes()
}

// nftServiceElements adds the map elements that send a service's
// destinations to its chain svc.
func nftServiceElements(b *bytes.Buffer, t string, s Service, svc string) {
	fmt.Fprintf(b, "add element %s service-ips { %s . %s . %d : goto %s }\n", t, s.ClusterIP, s.Protocol, s.Port, svc)
	if s.NodePort != 0 {
		fmt.Fprintf(b, "add element %s service-nodeports { %s . %d : goto %s }\n", t, s.Protocol, s.NodePort, svc)
	}
	for _, ip := range append(append([]netip.Addr(nil), s.ExternalIPs...), s.LoadBalancerIPs...) {
		fmt.Fprintf(b, "add element %s service-ips { %s . %s . %d : goto %s }\n", t, ip, s.Protocol, s.Port, svc)
	}
}
