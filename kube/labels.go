package kube

import (
	"sort"
	"strconv"
	"strings"
)

// LabelAllowlist says which pod labels become pod_labels series labels.
// The zero value allows none (the default, as in kube-state-metrics).
type LabelAllowlist struct {
	all   bool
	names map[string]struct{}
}

// ParseLabelAllowlist parses the --kube.pod-labels value: a comma-separated
// list of Kubernetes label keys, or "*" for all. Blank entries are ignored.
func ParseLabelAllowlist(s string) LabelAllowlist {
	var a LabelAllowlist
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		switch f {
		case "":
		case "*":
			a.all = true
		default:
			if a.names == nil {
				a.names = map[string]struct{}{}
			}
			a.names[f] = struct{}{}
		}
	}
	return a
}

// All reports whether every label is allowed.
func (a LabelAllowlist) All() bool { return a.all }

// Empty reports whether no label is allowed.
func (a LabelAllowlist) Empty() bool { return !a.all && len(a.names) == 0 }

// Allowed reports whether the label key is allowed.
func (a LabelAllowlist) Allowed(key string) bool {
	if a.all {
		return true
	}
	_, ok := a.names[key]
	return ok
}

// Filter returns the allowed subset of labels (nil when none is allowed).
func (a LabelAllowlist) Filter(labels map[string]string) map[string]string {
	if a.Empty() || len(labels) == 0 {
		return nil
	}
	if a.all {
		out := make(map[string]string, len(labels))
		for k, v := range labels {
			out[k] = v
		}
		return out
	}
	var out map[string]string
	for k, v := range labels {
		if _, ok := a.names[k]; ok {
			if out == nil {
				out = make(map[string]string, len(a.names))
			}
			out[k] = v
		}
	}
	return out
}

// SanitizeLabelName turns a Kubernetes label key into a valid Prometheus
// label name the way kube-state-metrics does: every character outside
// [a-zA-Z0-9_] becomes "_" (a leading digit is fine after the "label_"
// prefix that PrometheusLabelNames adds).
func SanitizeLabelName(key string) string {
	var b strings.Builder
	b.Grow(len(key))
	for _, r := range key {
		if r == '_' || (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String()
}

// PrometheusLabelNames maps Kubernetes label keys to Prometheus label names
// "label_<sanitized key>". Keys that sanitize to the same name (for example
// "app.kubernetes.io/name" and "app_kubernetes_io/name") would collide; each
// of them gets the suffix "_conflict<N>", N counting from 1 in the sorted
// order of the original keys, as kube-state-metrics does, so the result does
// not depend on map order. The result maps each input key to its name.
func PrometheusLabelNames(keys []string) map[string]string {
	sorted := append([]string(nil), keys...)
	sort.Strings(sorted)
	groups := make(map[string][]string, len(sorted))
	for _, k := range sorted {
		n := "label_" + SanitizeLabelName(k)
		if g := groups[n]; len(g) > 0 && g[len(g)-1] == k {
			continue // duplicate key
		}
		groups[n] = append(groups[n], k)
	}
	out := make(map[string]string, len(sorted))
	for n, g := range groups {
		if len(g) == 1 {
			out[g[0]] = n
			continue
		}
		for i, k := range g {
			out[k] = n + "_conflict" + strconv.Itoa(i+1)
		}
	}
	return out
}
