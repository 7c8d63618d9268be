package kube

import (
	"errors"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"k8s.io/klog/v2"
)

func TestRouteKlog(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	RouteKlog(zap.New(core))
	t.Cleanup(klog.ClearLogger)

	klog.ErrorS(errors.New("connection refused"), "Failed to watch", "resource", "pods")
	klog.InfoS("hello")
	klog.V(4).InfoS("too verbose")
	klog.Flush()

	all := logs.All()
	if len(all) != 2 {
		t.Fatalf("got %d entries, want 2: %v", len(all), all)
	}
	if all[0].Level != zapcore.ErrorLevel || all[0].Message != "Failed to watch" || all[0].ContextMap()["error"] != "connection refused" || all[0].ContextMap()["resource"] != "pods" {
		t.Errorf("error entry = %+v %v", all[0].Entry, all[0].ContextMap())
	}
	if all[1].Message != "hello" || all[1].LoggerName != "client-go" {
		t.Errorf("info entry = %+v", all[1].Entry)
	}
}
