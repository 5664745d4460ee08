package config

import (
	"reflect"
	"slices"
	"sort"

	"go.uber.org/zap"

	"github.com/filter-milter/filter-milter/gateway"
	"github.com/filter-milter/filter-milter/milter"
)

// RestartKeys are the settings a reload cannot change: the metrics
// server listens once, at start. A reload that changes one keeps its old
// value and says so (KeepRestartKeys).
var RestartKeys = []string{"metrics-listen"}

// Diff names the settings (by flag name, sorted) whose value differs
// between old and new; milters aside, which MilterChanges compares. Every
// key a configuration file can set is compared, so a key added to
// settingFlags is covered without more code here.
func Diff(old, new Settings) []string {
	var changed []string
	for name, copyFrom := range settingFlags {
		// Each key compared alone: copied out of each side into a zero
		// Settings, so that only that key's fields can differ.
		var a, b Settings
		copyFrom(&a, &old)
		copyFrom(&b, &new)
		if !reflect.DeepEqual(a, b) {
			changed = append(changed, name)
		}
	}
	sort.Strings(changed)
	return changed
}

// KeepRestartKeys gives s the running value of every key in RestartKeys
// that differs, and names those keys: they take a restart.
func (s *Settings) KeepRestartKeys(running Settings) []string {
	var kept []string
	for _, name := range RestartKeys {
		var a, b Settings
		settingFlags[name](&a, s)
		settingFlags[name](&b, &running)
		if !reflect.DeepEqual(a, b) {
			settingFlags[name](s, &running)
			kept = append(kept, name)
		}
	}
	return kept
}

// MilterChanges is how a reload changes the milters, each named as
// configured (milter.Config.Name).
type MilterChanges struct {
	Added, Removed, Changed []string
	// Reordered: the same milters, in another order (the order every
	// message goes through them).
	Reordered bool
}

// None reports whether the milters are the same, in the same order.
func (c MilterChanges) None() bool {
	return len(c.Added) == 0 && len(c.Removed) == 0 && len(c.Changed) == 0 && !c.Reordered
}

// ReusePools returns one pool per milter of milters, in their order: the
// running pool of a milter whose configuration is unchanged (same name,
// equal milter.Config), so that what it knows of its endpoints (which is
// down, and for how long) survives the reload; a new pool otherwise.
// Pools hold no connections between sessions, so a running pool left out
// needs no closing: the sessions still using it close their connections
// when they end.
func ReusePools(milters []milter.Config, running []*milter.Pool, log *zap.Logger) ([]*milter.Pool, MilterChanges) {
	var ch MilterChanges
	used := make([]bool, len(running))
	find := func(c milter.Config, equal bool) int {
		for i, p := range running {
			if !used[i] && p.Config.Name == c.Name && (!equal || reflect.DeepEqual(p.Config, c)) {
				return i
			}
		}
		return -1
	}
	pools := make([]*milter.Pool, len(milters))
	var kept []int // the running index of each pool reused, in the new order
	for i, c := range milters {
		if j := find(c, true); j >= 0 {
			used[j], pools[i] = true, running[j]
			kept = append(kept, j)
		}
	}
	for i, c := range milters {
		if pools[i] != nil {
			continue
		}
		pools[i] = milter.NewPool(c, log)
		if j := find(c, false); j >= 0 {
			used[j] = true
			ch.Changed = append(ch.Changed, c.Name)
		} else {
			ch.Added = append(ch.Added, c.Name)
		}
	}
	for i, p := range running {
		if !used[i] {
			ch.Removed = append(ch.Removed, p.Name())
		}
	}
	ch.Reordered = !slices.IsSorted(kept)
	return pools, ch
}

// ReloadedGatewayConfig is GatewayConfig with the pools ReusePools
// returned instead of new ones.
func (s *Settings) ReloadedGatewayConfig(pools []*milter.Pool, log *zap.Logger) gateway.Config {
	cfg := s.GatewayConfig(nil, log)
	cfg.Milters = pools
	return cfg
}
