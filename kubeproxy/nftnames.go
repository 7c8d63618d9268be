package kubeproxy

import "strings"

// NFTTable is the table kube-proxy's nftables mode owns, in the ip and ip6
// families (pkg/proxy/nftables/proxier.go).
const NFTTable = "kube-proxy"

// Sets and maps of kube-proxy's nftables table whose elements say which
// service port they are for.
const (
	// NFTServiceIPs maps "ip . proto . port" of every service IP to the
	// service port's chain.
	NFTServiceIPs = "service-ips"
	// NFTNoEndpointServices holds the service IPs and ports without
	// endpoints, with the service port's name as the element comment.
	NFTNoEndpointServices = "no-endpoint-services"
	// NFTServiceNodePorts maps "proto . port" of every node port to the
	// service port's external chain; NFTNoEndpointNodePorts holds the node
	// ports without endpoints for external traffic.
	NFTServiceNodePorts    = "service-nodeports"
	NFTNoEndpointNodePorts = "no-endpoint-nodeports"
	// NFTAffinityPrefix starts the names of the per-endpoint session
	// affinity sets.
	NFTAffinityPrefix = "affinity-"
)

// Kinds of chains in kube-proxy's nftables table, by the prefix kube-proxy
// gives them (pkg/proxy/nftables/proxier.go). Every chain without one of
// these prefixes is of kind NFTKindOther (base chains and fixed helpers such
// as services, masquerading, reject-chain).
const (
	NFTKindService  = "service"
	NFTKindLocal    = "local"
	NFTKindExternal = "external"
	NFTKindEndpoint = "endpoint"
	NFTKindFirewall = "firewall"
	NFTKindOther    = "other"
)

// NFTChainKinds lists every kind, in the order metrics are emitted.
var NFTChainKinds = []string{NFTKindService, NFTKindLocal, NFTKindExternal, NFTKindEndpoint, NFTKindFirewall, NFTKindOther}

var nftPrefixes = []struct{ prefix, kind string }{
	{"service-", NFTKindService},
	{"local-", NFTKindLocal},
	{"external-", NFTKindExternal},
	{"endpoint-", NFTKindEndpoint},
	{"firewall-", NFTKindFirewall},
}

// NFTChain is what a kube-proxy nftables chain name says in clear text.
// Per-service chains are named "<prefix><HASH8>-<ns>/<name>/<proto>/<port>",
// endpoint chains append "__<ip>/<port>" (servicePortChainNameBase,
// servicePortEndpointChainNameBase).
type NFTChain struct {
	Kind string
	// ServicePort is "ns/name/proto/port" (port empty when unnamed); empty
	// for NFTKindOther.
	ServicePort string
}

// ParseNFTChainName classifies a chain of kube-proxy's table by its name.
func ParseNFTChainName(name string) NFTChain {
	// Only per-service chains contain "/" (isServiceChainName).
	if !strings.Contains(name, "/") {
		return NFTChain{Kind: NFTKindOther}
	}
	for _, p := range nftPrefixes {
		rest, ok := strings.CutPrefix(name, p.prefix)
		if !ok {
			continue
		}
		// Skip the 8-character hash and its dash.
		_, base, ok := strings.Cut(rest, "-")
		if !ok {
			return NFTChain{Kind: NFTKindOther}
		}
		if p.kind == NFTKindEndpoint {
			base, _, _ = strings.Cut(base, "__")
		}
		if strings.Count(base, "/") != 3 {
			// Truncated by kube-proxy ("..." at 240 characters) or not
			// one of its chains: count it, attribute nothing.
			return NFTChain{Kind: p.kind}
		}
		return NFTChain{Kind: p.kind, ServicePort: base}
	}
	return NFTChain{Kind: NFTKindOther}
}

// SplitNFTServicePort splits "ns/name/proto/port".
func SplitNFTServicePort(s string) (namespace, name, protocol, port string, ok bool) {
	parts := strings.SplitN(s, "/", 4)
	if len(parts) != 4 || parts[0] == "" || parts[1] == "" {
		return "", "", "", "", false
	}
	return parts[0], parts[1], parts[2], parts[3], true
}

// IsNFTServiceChain reports whether chain is one of kube-proxy's
// per-service or per-endpoint chains: only those contain "/"
// (isServiceChainName).
func IsNFTServiceChain(chain string) bool { return strings.Contains(chain, "/") }

// NFTEndpointChains groups the endpoint chains among chains (one table's)
// by the service port their names carry ("ns/name/proto/port").
func NFTEndpointChains(chains []string) map[string][]string {
	out := map[string][]string{}
	for _, name := range chains {
		if c := ParseNFTChainName(name); c.Kind == NFTKindEndpoint && c.ServicePort != "" {
			out[c.ServicePort] = append(out[c.ServicePort], name)
		}
	}
	return out
}

// NFTServiceGotosByName returns the endpoint chains a service chain's
// verdict map goes to, known without reading the map, when they can only
// be the endpoint chains of its service port: kube-proxy writes the map
// "numgen random mod N vmap { 0 : goto endpoint-..., ... }" with one
// element per endpoint chain of the port, and the kernel keeps every
// chain a map refers to; so when the chain has that one map and N equals
// the number of endpoint chains named for its port, the map goes to
// exactly those. ok is false otherwise (a stale endpoint chain kube-proxy
// has not deleted yet, a local- chain balancing over a subset, any other
// shape): then the map must be read.
func NFTServiceGotosByName(chain string, modulus uint32, verdictMaps int, endpointChains map[string][]string) (gotos []string, ok bool) {
	c := ParseNFTChainName(chain)
	if c.Kind != NFTKindService || c.ServicePort == "" || verdictMaps != 1 {
		return nil, false
	}
	eps := endpointChains[c.ServicePort]
	if len(eps) == 0 || uint32(len(eps)) != modulus {
		return nil, false
	}
	return eps, true
}
