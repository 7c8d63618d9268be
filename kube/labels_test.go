package kube

import (
	"reflect"
	"testing"
)

func TestSanitizeLabelName(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"app", "app"},
		{"app.kubernetes.io/name", "app_kubernetes_io_name"},
		{"tier-1", "tier_1"},
		{"Already_OK9", "Already_OK9"},
		{"ünï", "_n_"},
		{"", ""},
	} {
		if got := SanitizeLabelName(tc.in); got != tc.want {
			t.Errorf("SanitizeLabelName(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestPrometheusLabelNames(t *testing.T) {
	got := PrometheusLabelNames([]string{"app.kubernetes.io/name", "team", "app_kubernetes_io/name", "app-kubernetes-io-name", "9lives"})
	want := map[string]string{
		// Sorted: "app-kubernetes-io-name" < "app.kubernetes.io/name" < "app_kubernetes_io/name".
		"app-kubernetes-io-name": "label_app_kubernetes_io_name_conflict1",
		"app.kubernetes.io/name": "label_app_kubernetes_io_name_conflict2",
		"app_kubernetes_io/name": "label_app_kubernetes_io_name_conflict3",
		"team":                   "label_team",
		"9lives":                 "label_9lives",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("PrometheusLabelNames = %v, want %v", got, want)
	}
	// Deterministic whatever the input order.
	again := PrometheusLabelNames([]string{"app_kubernetes_io/name", "9lives", "app-kubernetes-io-name", "team", "app.kubernetes.io/name"})
	if !reflect.DeepEqual(again, want) {
		t.Errorf("order-dependent result: %v", again)
	}
}

func TestLabelAllowlist(t *testing.T) {
	labels := map[string]string{"app": "web", "tier": "front", "secret-ish": "x"}
	for _, tc := range []struct {
		flag string
		want map[string]string
	}{
		{"", nil},
		{" , ", nil},
		{"app", map[string]string{"app": "web"}},
		{"app, tier ,missing", map[string]string{"app": "web", "tier": "front"}},
		{"*", labels},
	} {
		got := ParseLabelAllowlist(tc.flag).Filter(labels)
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("allowlist %q: Filter = %v, want %v", tc.flag, got, tc.want)
		}
	}
}
