// Command netinspect serves Kubernetes node networking metrics to Prometheus.
//
// This file only wires flags, logging, collectors and the HTTP server
// together; the logic lives in collector/ and kube/.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// version and revision are set at build time with -ldflags -X.
var (
	version  = "dev"
	revision = "unknown"
)

// Exit codes of the binary (CONTRACT.md).
const (
	exitOK       = 0
	exitStartup  = 1
	exitBadFlags = 2
)

func main() {
	info, _ := debug.ReadBuildInfo()
	version, revision = buildVersion(version, revision, info)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run parses args, starts the exporter and serves until ctx is done. It
// returns the process exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, code, err := parseFlags(args, stdout, stderr)
	if err != nil {
		return code
	}
	if cfg == nil { // --help or --version already printed
		return exitOK
	}
	if cfg.command == "inspect" {
		err = runInspect(ctx, cfg, stdout, stderr)
	} else {
		err = serve(ctx, cfg, stderr)
	}
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "netinspect: %v\n", err)
	var bf badFlagsError
	if errors.As(err, &bf) {
		fmt.Fprintln(stderr, "run netinspect --help for the flags")
		return exitBadFlags
	}
	return exitStartup
}

// badFlagsError is a flag value that parsed but that a collector rejects;
// the process exits 2, as for any other bad flag.
type badFlagsError struct{ msg string }

func (e badFlagsError) Error() string { return e.msg }

func badFlagsf(format string, a ...any) error {
	return badFlagsError{msg: fmt.Sprintf(format, a...)}
}
