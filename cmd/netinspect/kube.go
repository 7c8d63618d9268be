package main

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/netinspect/netinspect/kube"
)

// kubeFlags holds --kubeconfig, --node-name (default env NODE_NAME) and
// --kube.pod-labels (comma list, "*" for all).
type kubeFlags struct {
	kubeconfig string
	nodeName   string
	podLabels  string
}

func addKubeFlags(app *kingpin.Application) *kubeFlags {
	f := &kubeFlags{}
	app.Flag("kubeconfig", "Kubeconfig file for the Kubernetes API (default: the in-cluster config; with neither, Kubernetes enrichment is off).").StringVar(&f.kubeconfig)
	app.Flag("node-name", "Name of the node this exporter runs on; only its pods are watched.").Envar("NODE_NAME").StringVar(&f.nodeName)
	app.Flag("kube.pod-labels", "Comma-separated pod label keys exported in netinspect_pod_labels as label_<name>; \"*\" for all (default: none).").StringVar(&f.podLabels)
	return f
}

// restConfig returns the API server's config, or nil when there is none
// (no --kubeconfig and not in a cluster), with the reason.
func (f *kubeFlags) restConfig() (*rest.Config, string, error) {
	if f.kubeconfig != "" {
		if _, err := os.Stat(f.kubeconfig); err != nil {
			return nil, "", fmt.Errorf("kubeconfig %q (--kubeconfig) is not readable: %w; fix the path or omit the flag to use the in-cluster config", f.kubeconfig, err)
		}
		cfg, err := clientcmd.BuildConfigFromFlags("", f.kubeconfig)
		if err != nil {
			return nil, "", fmt.Errorf("kubeconfig %q (--kubeconfig) is not usable: %w; fix the file (its current context needs a cluster server and credentials) or omit the flag to use the in-cluster config", f.kubeconfig, err)
		}
		return cfg, "", nil
	}
	cfg, err := rest.InClusterConfig()
	if errors.Is(err, rest.ErrNotInCluster) {
		return nil, "no --kubeconfig and not running in a cluster", nil
	}
	if err != nil {
		return nil, "in-cluster config unusable: " + err.Error(), nil
	}
	return cfg, "", nil
}

// startKube starts Kubernetes enrichment in the background and returns at
// once; it never blocks on the API server. With no kubeconfig and no
// in-cluster config it logs that enrichment is off and returns a nil index.
// It registers the kube metrics on reg.
func startKube(ctx context.Context, f *kubeFlags, logger *zap.Logger, reg prometheus.Registerer) (*kube.Index, func() (ready bool, detail string), error) {
	cfg, why, err := f.restConfig()
	if err != nil {
		return nil, nil, err
	}
	if cfg == nil {
		logger.Info("kubernetes enrichment off: pod and service labels will be empty", zap.String("reason", why))
		return nil, func() (bool, string) { return true, "kubernetes enrichment off" }, nil
	}
	if f.nodeName == "" {
		return nil, nil, errors.New("node name unknown: set --node-name or the NODE_NAME environment variable (in the DaemonSet, from the downward API field spec.nodeName)")
	}
	w, err := kube.NewWatcher(kube.Config{
		REST:      cfg,
		NodeName:  f.nodeName,
		PodLabels: kube.ParseLabelAllowlist(f.podLabels),
		Logger:    logger.Named("kube"),
	})
	if err != nil {
		return nil, nil, err
	}
	if err := reg.Register(w.Collector()); err != nil {
		return nil, nil, fmt.Errorf("register kube metrics: %w", err)
	}
	kube.RouteKlog(logger)
	w.Start(ctx)
	logger.Info("kubernetes enrichment on", zap.String("api_server", cfg.Host), zap.String("node", f.nodeName))
	return w.Index(), w.Ready, nil
}
