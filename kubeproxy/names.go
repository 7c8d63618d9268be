// Package kubeproxy holds kube-proxy's own naming rules, mirrored from its
// source (kubernetes/kubernetes pkg/proxy, v1.37): the hashed names of its
// iptables chains, the names of its nftables chains, sets and maps, and how
// the mode kube-proxy runs in shows in the rules it leaves on a node.
package kubeproxy

import (
	"crypto/sha256"
	"encoding/base32"
	"strings"
)

// Prefixes of kube-proxy's per-service and per-endpoint iptables chains
// (pkg/proxy/iptables/proxier.go). Each is followed by 16 characters of
// base32(sha256(...)).
const (
	PrefixSVC = "KUBE-SVC-"
	PrefixSVL = "KUBE-SVL-"
	PrefixSEP = "KUBE-SEP-"
	PrefixEXT = "KUBE-EXT-"
	PrefixFW  = "KUBE-FW-"
)

// HashedPrefixes are the chain prefixes whose chains are summed into one
// series per table ("KUBE-SVC-*") rather than exported one per chain.
var HashedPrefixes = []string{PrefixSVC, PrefixSVL, PrefixSEP, PrefixEXT, PrefixFW}

// hashLen is the length of the base32 hash that follows a hashed prefix.
const hashLen = 16

// PortProtoHash is kube-proxy's portProtoHash: the first 16 characters of
// base32(sha256(servicePortName + protocol)), where servicePortName is
// "namespace/name" or "namespace/name:portname" and protocol is lower case.
// KUBE-SVC-, KUBE-SVL-, KUBE-EXT- and KUBE-FW- chains of one service port
// share it.
func PortProtoHash(servicePortName, protocol string) string {
	sum := sha256.Sum256([]byte(servicePortName + protocol))
	return base32.StdEncoding.EncodeToString(sum[:])[:hashLen]
}

// ServicePortName is kube-proxy's name of a service port:
// "namespace/name", with ":port" appended when the port has a name.
func ServicePortName(namespace, name, portName string) string {
	if portName == "" {
		return namespace + "/" + name
	}
	return namespace + "/" + name + ":" + portName
}

// SplitServicePortName splits "namespace/name[:port]"; ok is false when s is
// not of that form.
func SplitServicePortName(s string) (namespace, name, port string, ok bool) {
	ns, rest, found := strings.Cut(s, "/")
	if !found || ns == "" || rest == "" {
		return "", "", "", false
	}
	name, port, _ = strings.Cut(rest, ":")
	if name == "" {
		return "", "", "", false
	}
	return ns, name, port, true
}

// HashedChain splits a chain name into one of HashedPrefixes and its hash;
// ok is false for any other chain.
func HashedChain(chain string) (prefix, hash string, ok bool) {
	if !strings.HasPrefix(chain, "KUBE-") {
		return "", "", false
	}
	for _, p := range HashedPrefixes {
		if len(chain) == len(p)+hashLen && strings.HasPrefix(chain, p) {
			return p, chain[len(p):], true
		}
	}
	return "", "", false
}
