package kube

import (
	"github.com/go-logr/logr"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"k8s.io/klog/v2"
)

// RouteKlog sends client-go's klog output (informer errors, API warnings)
// through logger, so the binary writes one log format. klog is process
// global: call it once, from main's wiring, not from library code or tests.
// klog verbosity 0 logs at info, higher verbosities at debug; verbosities
// above 2 are dropped.
func RouteKlog(logger *zap.Logger) {
	klog.SetLogger(logr.New(&zapSink{l: logger.Named("client-go").WithOptions(zap.AddCallerSkip(2))}))
}

type zapSink struct{ l *zap.Logger }

func (s *zapSink) Init(logr.RuntimeInfo) {}

func (s *zapSink) Enabled(level int) bool {
	if level == 0 {
		return s.l.Core().Enabled(zapcore.InfoLevel)
	}
	return level <= 2 && s.l.Core().Enabled(zapcore.DebugLevel)
}

func (s *zapSink) Info(level int, msg string, kv ...any) {
	if level == 0 {
		s.l.Sugar().Infow(msg, kv...)
		return
	}
	s.l.Sugar().Debugw(msg, kv...)
}

func (s *zapSink) Error(err error, msg string, kv ...any) {
	s.l.Sugar().Errorw(msg, append([]any{zap.Error(err)}, kv...)...)
}

func (s *zapSink) WithValues(kv ...any) logr.LogSink {
	return &zapSink{l: s.l.Sugar().With(kv...).Desugar()}
}

func (s *zapSink) WithName(name string) logr.LogSink {
	return &zapSink{l: s.l.Named(name)}
}
