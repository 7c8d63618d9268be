package dashboards

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/netinspect/netinspect/test/testenv"
)

var update = flag.Bool("update", false, "rewrite the dashboard JSON files from the code")

type dsRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

func TestJSONFilesMatchCode(t *testing.T) {
	for _, d := range All() {
		want, err := d.JSON()
		if err != nil {
			t.Fatal(err)
		}
		if *update {
			if err := os.WriteFile(d.File, want, 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(d.File)
		if err != nil {
			t.Fatalf("%v (run `go test ./dashboards -update`)", err)
		}
		if string(got) != string(want) {
			t.Errorf("%s differs from dashboards.go: run `go test ./dashboards -update`", d.File)
		}
	}
}

// TestLinterConventions checks the rendered JSON against the conventions of
// Grafana's dashboard-linter.
func TestLinterConventions(t *testing.T) {
	uids := map[string]bool{}
	rateRange := regexp.MustCompile(`\b(rate|irate|increase)\([^\[]*\[([^\]]*)\]`)
	for _, d := range All() {
		b, err := d.JSON()
		if err != nil {
			t.Fatal(err)
		}
		var dash struct {
			UID        string `json:"uid"`
			Editable   bool   `json:"editable"`
			Templating struct {
				List []struct {
					Name, Type string
				} `json:"list"`
			} `json:"templating"`
			Panels []struct {
				Title      string `json:"title"`
				Datasource dsRef  `json:"datasource"`
				Field      struct {
					Defaults struct{ Unit string } `json:"defaults"`
				} `json:"fieldConfig"`
				Targets []struct {
					Expr       string `json:"expr"`
					Datasource dsRef  `json:"datasource"`
				} `json:"targets"`
			} `json:"panels"`
		}
		if err := json.Unmarshal(b, &dash); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(dash.UID, "netinspect-") || uids[dash.UID] {
			t.Errorf("%s: uid %q not a unique netinspect- uid", d.File, dash.UID)
		}
		uids[dash.UID] = true
		if dash.Editable {
			t.Errorf("%s: editable", d.File)
		}
		if len(dash.Templating.List) == 0 || dash.Templating.List[0].Name != "datasource" || dash.Templating.List[0].Type != "datasource" {
			t.Errorf("%s: first template variable is not the datasource", d.File)
		}
		ds := dsRef{Type: "prometheus", UID: "${datasource}"}
		for _, p := range dash.Panels {
			if p.Datasource != ds {
				t.Errorf("%s %q: datasource %+v, want %+v", d.File, p.Title, p.Datasource, ds)
			}
			if p.Field.Defaults.Unit == "" {
				t.Errorf("%s %q: no unit", d.File, p.Title)
			}
			if len(p.Targets) == 0 {
				t.Errorf("%s %q: no targets", d.File, p.Title)
			}
			for _, tg := range p.Targets {
				if tg.Datasource != ds {
					t.Errorf("%s %q: target datasource %+v", d.File, p.Title, tg.Datasource)
				}
				for _, m := range rateRange.FindAllStringSubmatch(tg.Expr, -1) {
					if m[2] != "$__rate_interval" {
						t.Errorf("%s %q: %s over [%s], want [$__rate_interval]", d.File, p.Title, m[1], m[2])
					}
				}
				if !strings.Contains(tg.Expr, `job=~"$job"`) {
					t.Errorf("%s %q: query %q does not select $job", d.File, p.Title, tg.Expr)
				}
			}
		}
	}
}

// TestQueriesParse has promtool parse every panel query (variables expanded),
// by checking them as recording rules.
func TestQueriesParse(t *testing.T) {
	promtool := testenv.RequireCommand(t, "promtool")
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard-queries\n    rules:\n")
	n := 0
	for _, d := range All() {
		for _, q := range d.Queries() {
			expr := Expand(q, "5m", map[string]string{"job": "netinspect", "instance": "node-a:10271"})
			fmt.Fprintf(&rules, "      - record: dashboard:query_%d:expr\n        expr: %q\n", n, expr)
			n++
		}
	}
	path := filepath.Join(t.TempDir(), "queries.yml")
	if err := os.WriteFile(path, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", path).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool rejects a dashboard query: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), fmt.Sprintf("SUCCESS: %d rules found", n)) {
		t.Errorf("promtool output %q, want %d rules", out, n)
	}
}
