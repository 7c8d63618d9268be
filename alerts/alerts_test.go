// Package alerts holds netinspect's Prometheus alerting and recording rules
// (netinspect.rules.yml) and their promtool unit tests (tests/). This test
// runs promtool on them and checks the contract every alert keeps: the names
// CONTRACT.md lists, severity, summary, description and a runbook_url that
// points at an existing docs/runbooks/<AlertName>.md, and a promtool test of
// each alert both firing and not firing.
package alerts

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/netinspect/netinspect/test/testenv"
)

const (
	ruleFile      = "netinspect.rules.yml"
	runbookPrefix = "https://github.com/netinspect/netinspect/blob/main/docs/runbooks/"
)

// contractAlerts are the alert names CONTRACT.md promises.
var contractAlerts = []string{
	"NetinspectConntrackTableNearlyFull",
	"NetinspectConntrackTableFull",
	"NetinspectConntrackTableFillingUp",
	"NetinspectIPVSServiceNoBackends",
	"NetinspectRulesSnapshotStale",
	"NetinspectCollectorFailing",
	"NetinspectDown",
	"NetinspectKubeProxyDrift",
	"NetinspectConntrackStaleEntries",
	"NetinspectSNATPortsNearlyExhausted",
	"NetinspectNeighbourTableNearlyFull",
}

type ruleFileDoc struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

type promtoolTestDoc struct {
	Tests []struct {
		AlertRuleTest []struct {
			AlertName string `yaml:"alertname"`
			ExpAlerts []struct {
				ExpAnnotations map[string]string `yaml:"exp_annotations"`
			} `yaml:"exp_alerts"`
		} `yaml:"alert_rule_test"`
	} `yaml:"tests"`
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
}

func promtool(t *testing.T, args ...string) {
	t.Helper()
	bin := testenv.RequireCommand(t, "promtool")
	out, err := exec.Command(bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	t.Logf("promtool %s:\n%s", strings.Join(args, " "), out)
}

func testFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("tests/*.yml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no promtool test files in tests/: %v", err)
	}
	return files
}

func TestPromtoolCheckRules(t *testing.T) {
	promtool(t, "check", "rules", ruleFile)
}

func TestPromtoolTestRules(t *testing.T) {
	promtool(t, append([]string{"test", "rules"}, testFiles(t)...)...)
}

var runbookSections = []string{"## Meaning", "## Impact", "## Diagnosis", "## Mitigation"}

func TestEveryAlertKeepsTheContract(t *testing.T) {
	var rules ruleFileDoc
	readYAML(t, ruleFile, &rules)

	seen := map[string]bool{}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				if !regexp.MustCompile(`^[a-z_]+:netinspect_[a-z0-9_]+:[a-z0-9_]+$`).MatchString(r.Record) {
					t.Errorf("recording rule %q does not follow level:metric:operations naming", r.Record)
				}
				continue
			}
			seen[r.Alert] = true
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", r.Alert, s)
			}
			for _, a := range []string{"summary", "description", "runbook_url"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s: annotation %s missing", r.Alert, a)
				}
			}
			if want := runbookPrefix + r.Alert + ".md"; r.Annotations["runbook_url"] != want {
				t.Errorf("%s: runbook_url %q, want %q", r.Alert, r.Annotations["runbook_url"], want)
			}
			runbook := filepath.Join("..", "docs", "runbooks", r.Alert+".md")
			b, err := os.ReadFile(runbook)
			if err != nil {
				t.Errorf("%s: runbook: %v", r.Alert, err)
				continue
			}
			for _, s := range runbookSections {
				if !strings.Contains(string(b), "\n"+s) {
					t.Errorf("%s: section %q missing", runbook, s)
				}
			}
		}
	}
	for _, name := range contractAlerts {
		if !seen[name] {
			t.Errorf("alert %s (CONTRACT.md) is not in %s", name, ruleFile)
		}
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			want := map[string]string{
				"NetinspectConntrackTableNearlyFull": "warning",
				"NetinspectConntrackTableFillingUp":  "warning",
				"NetinspectConntrackTableFull":       "critical",
			}[r.Alert]
			if want != "" && r.Labels["severity"] != want {
				t.Errorf("%s: severity %q, CONTRACT.md says %s", r.Alert, r.Labels["severity"], want)
			}
		}
	}

	// Every alert has a promtool test where it fires (with its runbook_url
	// asserted) and one where it does not.
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, f := range testFiles(t) {
		var doc promtoolTestDoc
		readYAML(t, f, &doc)
		for _, tc := range doc.Tests {
			for _, a := range tc.AlertRuleTest {
				if len(a.ExpAlerts) == 0 {
					quiet[a.AlertName] = true
				}
				for _, e := range a.ExpAlerts {
					if e.ExpAnnotations["runbook_url"] == runbookPrefix+a.AlertName+".md" {
						fires[a.AlertName] = true
					}
				}
			}
		}
	}
	for name := range seen {
		if !fires[name] {
			t.Errorf("%s: no promtool test where it fires with its runbook_url asserted", name)
		}
		if !quiet[name] {
			t.Errorf("%s: no promtool test where it does not fire (exp_alerts: [])", name)
		}
	}
}
