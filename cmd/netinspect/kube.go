package main

// TEMPORARY placeholder, replaced by the Kubernetes enrichment (issue 3).

import (
	"context"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

type kubeFlags struct{}

func addKubeFlags(app *kingpin.Application) *kubeFlags { return &kubeFlags{} }

func startKube(ctx context.Context, f *kubeFlags, logger *zap.Logger, reg prometheus.Registerer) (any, func() (bool, string), error) {
	logger.Info("kubernetes enrichment off: not built yet")
	return nil, func() (bool, string) { return true, "kubernetes enrichment off" }, nil
}
