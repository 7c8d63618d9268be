package prometheus_test

import (
	"os"
	"strings"
	"testing"

	"github.com/netinspect/netinspect/test/prometheus"
)

// TestVersionMatchesToolsModule keeps the version that names the cached
// binary in step with tools/prometheus.
func TestVersionMatchesToolsModule(t *testing.T) {
	b, err := os.ReadFile("../../tools/prometheus/go.mod")
	if err != nil {
		t.Fatal(err)
	}
	if want := "github.com/prometheus/prometheus " + prometheus.KubernetesSDVersion; !strings.Contains(string(b), want) {
		t.Errorf("tools/prometheus/go.mod does not require %s; update KubernetesSDVersion", want)
	}
}
