// Package netinspect_test holds the test that keeps the module's layout
// true (ARCHITECTURE.md): kernel readers under source/ know nothing of
// Prometheus, Kubernetes or the collectors; collectors only join and emit,
// so they import no netlink library and make no syscalls; kube-proxy's naming
// rules know nothing of Prometheus.
package netinspect_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/netinspect/netinspect"

// layoutRule forbids the packages under dir to depend on some packages.
type layoutRule struct {
	// dir is a directory of the module ("source" means source/ and every
	// package below it).
	dir string
	// direct checks only the packages' own imports; otherwise every
	// package they depend on, transitively.
	direct bool
	// forbidden are import paths or path prefixes ending in "/".
	forbidden []string
	why       string
}

var layoutRules = []layoutRule{
	{
		dir: "source",
		forbidden: []string{
			"github.com/prometheus/client_golang/",
			module + "/kube",
			module + "/collector",
		},
		why: "kernel readers return plain Go structs; collectors join them to Kubernetes and emit metrics",
	},
	{
		dir:    "collector",
		direct: true,
		forbidden: []string{
			"github.com/mdlayher/netlink", "github.com/mdlayher/genetlink",
			"github.com/vishvananda/netlink", "github.com/vishvananda/netns",
			"github.com/ti-mo/", "github.com/google/nftables", "github.com/miekg/dns",
			"golang.org/x/sys/unix", "syscall",
		},
		why: "collectors only join and emit; reading the kernel is source/'s",
	},
	{
		dir:       "kubeproxy",
		forbidden: []string{"github.com/prometheus/client_golang/"},
		why:       "kube-proxy's naming rules are plain functions",
	},
}

// listedPackage is what `go list -json` says of one package.
type listedPackage struct {
	ImportPath string
	Imports    []string
	Deps       []string
	Module     *struct{ Path string }
}

// listPackages runs `go list -deps -json ./...` and returns the module's
// own packages (without their tests).
func listPackages(t *testing.T) []listedPackage {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command("go", "list", "-deps", "-json", "./...")
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	var pkgs []listedPackage
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p listedPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		if p.Module != nil && p.Module.Path == module {
			pkgs = append(pkgs, p)
		}
	}
	if len(pkgs) == 0 {
		t.Fatal("go list found no package of the module")
	}
	return pkgs
}

// violations lists, for each rule, the imports of the module's packages
// that break it, as "package imports path (why)".
func violations(pkgs []listedPackage, rules []layoutRule) []string {
	var out []string
	for _, r := range rules {
		prefix := module + "/" + r.dir
		for _, p := range pkgs {
			if p.ImportPath != prefix && !strings.HasPrefix(p.ImportPath, prefix+"/") {
				continue
			}
			deps := p.Deps
			if r.direct {
				deps = p.Imports
			}
			for _, d := range deps {
				for _, f := range r.forbidden {
					if d == f || (strings.HasSuffix(f, "/") && strings.HasPrefix(d, f)) || strings.HasPrefix(d, f+"/") {
						out = append(out, p.ImportPath+" imports "+d+" ("+r.why+")")
					}
				}
			}
		}
	}
	sort.Strings(out)
	return out
}

func TestLayoutImportRules(t *testing.T) {
	pkgs := listPackages(t)
	for _, r := range layoutRules {
		found := false
		for _, p := range pkgs {
			found = found || strings.HasPrefix(p.ImportPath+"/", module+"/"+r.dir+"/")
		}
		if !found {
			t.Errorf("no package under %s/: the rule for it checks nothing", r.dir)
		}
	}
	for _, v := range violations(pkgs, layoutRules) {
		t.Error(v)
	}
}

// The rules catch what they are meant to: a reader that imports
// client_golang through another package, and a collector that imports a
// netlink library itself.
func TestLayoutRulesCatchViolations(t *testing.T) {
	pkgs := []listedPackage{
		{ImportPath: module + "/source/conntrack", Deps: []string{"fmt", "github.com/prometheus/client_golang/prometheus"}},
		{ImportPath: module + "/collector", Imports: []string{"fmt", "github.com/vishvananda/netlink"}, Deps: []string{"golang.org/x/sys/unix"}},
		{ImportPath: module + "/kubeproxy", Deps: []string{"strings"}},
		{ImportPath: module + "/inspect", Imports: []string{"github.com/mdlayher/netlink"}},
	}
	got := violations(pkgs, layoutRules)
	want := []string{
		module + "/collector imports github.com/vishvananda/netlink (" + layoutRules[1].why + ")",
		module + "/source/conntrack imports github.com/prometheus/client_golang/prometheus (" + layoutRules[0].why + ")",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("violations:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
