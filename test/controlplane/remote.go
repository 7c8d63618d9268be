package controlplane

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// AdminKubeconfigFor writes an admin kubeconfig (client certificate of
// group system:masters) whose server is https://host:APIServerPort and
// returns its path, for a client that reaches the API server by a route
// other than the namespace's loopback: e.g. a qemu guest whose connections
// qemu makes from inside NS (test/vm's Network). The serving certificate
// names 127.0.0.1, ::1, AdvertiseAddress and the first Service IP; host
// must be one of them, since TLS is verified.
func (cp *ControlPlane) AdminKubeconfigFor(t testing.TB, host string) string {
	t.Helper()
	dir := filepath.Join(cp.Dir, "kubeconfigs")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, fmt.Sprintf("admin-%s.kubeconfig", host))
	server := "https://" + net.JoinHostPort(host, strconv.Itoa(APIServerPort))
	if err := writeKubeconfig(path, server, cp.pki.caPEM, func(a *clientcmdapi.AuthInfo) {
		a.ClientCertificateData, a.ClientKeyData = cp.pki.adminCertPEM, cp.pki.adminKeyPEM
	}); err != nil {
		t.Fatal(err)
	}
	return path
}
