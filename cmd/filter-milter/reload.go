package main

import (
	"errors"
	"strings"
	"sync"

	"go.uber.org/zap"

	"github.com/filter-milter/filter-milter/config"
	"github.com/filter-milter/filter-milter/gateway"
	"github.com/filter-milter/filter-milter/metrics"
	"github.com/filter-milter/filter-milter/milter"
)

// reloader is what SIGHUP changes in the running filter. OpenSMTPD cannot
// restart a filter without restarting itself (a filter that exits takes
// smtpd down), so the filter reloads itself: it reads its settings again
// as at start, the command line over the -config file, and hands the
// gateway the result for the sessions that start from then on.
type reloader struct {
	args  []string // the command line, whose flags still override the file
	log   *zap.Logger
	level zap.AtomicLevel // the log level, which a reload changes at once
	g     *gateway.Gateway
	obs   *metrics.Observer // nil without -metrics-listen

	mu      sync.Mutex // one reload at a time
	running config.Settings
	pools   []*milter.Pool // the running configuration's milters, in order
}

// loadSettings reads the settings as runFilter does at start: defaults,
// the -config file, the flags of args over it, and the checks.
func loadSettings(args []string) (config.Settings, []milter.Config, error) {
	s := config.Defaults()
	f, _ := filterFlags(&s)
	if err := f.Parse(args); err != nil {
		// The same args parsed at start; only a changed flag set fails here.
		return s, nil, err
	}
	if err := s.ApplyFile(f.FlagSet); err != nil {
		return s, nil, err
	}
	milters, err := s.MilterConfigs()
	return s, milters, err
}

// reload reads the configuration again and makes it the one new sessions
// take; sessions in flight finish on the one they started with. On any
// error the running configuration stays. Either way it logs one line:
// an error naming the file, line and key, or what changed.
func (r *reloader) reload() {
	r.mu.Lock()
	defer r.mu.Unlock()
	s, milters, err := loadSettings(r.args)
	if err != nil {
		r.counted(metrics.ReloadFailed)
		r.log.Error("configuration reload failed; the running configuration stays", zap.String("file", s.ConfigPath),
			zap.Error(errors.New(oneLine(err.Error()))))
		return
	}
	restart := s.KeepRestartKeys(r.running)
	changed := config.Diff(r.running, s)
	pools, mc := config.ReusePools(milters, r.pools, r.log)

	cfg := s.ReloadedGatewayConfig(pools, r.log)
	if r.obs != nil {
		cfg.Observer = r.obs
		r.obs.Rewatch(pools)
	}
	setMemoryLimit(cfg.MemoryBudget)
	r.g.Reload(cfg)
	r.running, r.pools = s, pools
	r.counted(metrics.ReloadOK)

	// The line goes out at the old level, the new one applies after it:
	// a postmaster who turns the level to warn sees the reload that did.
	defer r.level.SetLevel(s.LogLevel)
	var fields []zap.Field
	if s.ConfigPath != "" {
		fields = append(fields, zap.String("file", s.ConfigPath))
	}
	if mc.None() && len(changed) == 0 && len(restart) == 0 {
		r.log.Info("configuration reloaded: nothing changed", fields...)
		return
	}
	for _, f := range []struct {
		key   string
		names []string
	}{{"milters_added", mc.Added}, {"milters_removed", mc.Removed}, {"milters_changed", mc.Changed},
		{"settings_changed", changed}, {"needs_restart", restart}} {
		if len(f.names) > 0 {
			fields = append(fields, zap.Strings(f.key, f.names))
		}
	}
	if mc.Reordered {
		fields = append(fields, zap.Bool("milters_reordered", true))
	}
	r.log.Info("configuration reloaded", fields...)
}

func (r *reloader) counted(result string) {
	if r.obs != nil {
		r.obs.ConfigReloaded(result)
	}
}

// oneLine joins the lines of an error (several unknown keys, one a line)
// with "; ", so that a failed reload is one line in smtpd's log.
func oneLine(s string) string { return strings.ReplaceAll(s, "\n", "; ") }
