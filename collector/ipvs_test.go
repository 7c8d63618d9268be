package collector

import (
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"go.uber.org/zap"
)

func TestNewIPVSBackendLabels(t *testing.T) {
	tests := []struct {
		labels  []string
		wantErr bool
	}{
		{labels: nil},
		{labels: []string{}},
		{labels: []string{"namespace", "service", "pod"}},
		{labels: []string{"pod", "nope"}, wantErr: true},
		{labels: []string{"pod", "pod"}, wantErr: true},
	}
	for _, tt := range tests {
		_, err := NewIPVS(IPVSConfig{Backends: true, BackendLabels: tt.labels}, Deps{Logger: zap.NewNop()})
		if (err != nil) != tt.wantErr {
			t.Errorf("labels %q: err = %v, wantErr %v", tt.labels, err, tt.wantErr)
		}
	}
}

func TestWithLabelPairKeepsNamesSorted(t *testing.T) {
	pairs := labelPairCache{}
	lp := []*dto.LabelPair{pairs.get("address", "a"), pairs.get("namespace", "n"), pairs.get("port", "p")}
	for _, tc := range []struct{ name, want string }{
		{"aaa", "aaa,address,namespace,port"},
		{"flags", "address,flags,namespace,port"},
		{"zone", "address,namespace,port,zone"},
	} {
		var names []string
		for _, p := range withLabelPair(lp, pairs.get(tc.name, "v")) {
			names = append(names, p.GetName())
		}
		if got := strings.Join(names, ","); got != tc.want {
			t.Errorf("adding %s: %s, want %s", tc.name, got, tc.want)
		}
	}
	if len(lp) != 3 {
		t.Errorf("the input was changed: %d pairs", len(lp))
	}
	if pairs.get("flags", "v") != pairs.get("flags", "v") {
		t.Error("the same name and value gave two pairs")
	}
}
