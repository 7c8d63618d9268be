package main

import (
	"context"
	"io"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/netinspect/netinspect/collector"
	"github.com/netinspect/netinspect/inspect"
)

// runInspect prints the one-shot report of `netinspect inspect`.
func runInspect(ctx context.Context, cfg *config, stdout, stderr io.Writer) error {
	logger, err := newLogger(cfg.logLevel, cfg.logFormat, stderr)
	if err != nil {
		return err
	}
	defer logger.Sync() //nolint:errcheck // nothing to do about a failed flush at exit

	ctx, cancel := context.WithTimeout(ctx, cfg.inspect.timeout)
	defer cancel()
	index, kubeReady, err := startKube(ctx, cfg.kube, logger, prometheus.NewRegistry())
	if err != nil {
		return err
	}
	kubeState := waitKube(ctx, index != nil, kubeReady)

	deps := collector.Deps{Logger: logger, Paths: cfg.paths, Index: index}
	sources, err := buildCollectors(cfg, deps)
	if err != nil {
		return err
	}
	results, problems := inspect.Gather(ctx, sources)

	node := cfg.kube.nodeName
	if node == "" {
		node, _ = os.Hostname()
	}
	report := inspect.Build(node, kubeState, index, results, problems, inspect.Filter{
		Namespace: cfg.inspect.namespace, Pod: cfg.inspect.pod, Service: cfg.inspect.service,
	})
	if cfg.inspect.output == "json" {
		return report.WriteJSON(stdout)
	}
	return report.WriteTable(stdout)
}

// waitKube waits, until ctx is done, for the Kubernetes cache to sync, and
// returns its state in words.
func waitKube(ctx context.Context, on bool, ready func() (bool, string)) string {
	if !on {
		_, detail := ready()
		return detail
	}
	for {
		ok, detail := ready()
		if ok {
			return detail
		}
		select {
		case <-ctx.Done():
			return detail + " (gave up waiting)"
		case <-time.After(100 * time.Millisecond):
		}
	}
}
