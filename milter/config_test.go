package milter

import (
	"testing"
	"time"
)

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig("inet:127.0.0.1:8891{default_action=accept, command_timeout=10s, content_timeout=120, connect_timeout=2s, protocol=4}", DefaultOptions)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Endpoints) != 1 || c.Endpoints[0].Address != "127.0.0.1:8891" || c.DefaultAction != "accept" ||
		c.Options.CommandTimeout != 10*time.Second || c.Options.ContentTimeout != 120*time.Second ||
		c.Options.ConnectTimeout != 2*time.Second || c.Options.Version != 4 {
		t.Errorf("parsed %+v", c)
	}
	c, err = ParseConfig("inet:10.0.0.1:11332, inet:11332@10.0.0.2", DefaultOptions)
	if err != nil || len(c.Endpoints) != 2 || c.Endpoints[1].Address != "10.0.0.2:11332" || c.Options != DefaultOptions {
		t.Errorf("pool: %+v %v", c, err)
	}
	c, err = ParseConfig("inet:1{eom_timeout=20m, max_modifications=500, max_modification_bytes=8M}", DefaultOptions)
	if err != nil || c.Options.EOMTimeout != 20*time.Minute || c.Options.MaxModifications != 500 || c.Options.MaxModificationBytes != 8<<20 ||
		c.Options.ContentTimeout != DefaultOptions.ContentTimeout {
		t.Errorf("end-of-message bounds: %+v %v", c.Options, err)
	}
	for _, bad := range []string{
		"inet:1{eom_timeout=0}", "inet:1{max_modifications=0}", "inet:1{max_modifications=-3}", "inet:1{max_modifications=1x}",
		"inet:1{max_modification_bytes=0}", "inet:1{max_modification_bytes=12T}", "inet:1{max_modifications=99999999999}",
		"inet:1{default_action=drop}", "inet:1{command_timeout=x}", "inet:1{command_timeout=-1s}", "inet:1{protocol=7}",
		"inet:1{nonsense=1}", "inet:1{default_action}", "inet:1{default_action=accept", "inet:1,bogus:2", "",
	} {
		if c, err := ParseConfig(bad, DefaultOptions); err == nil {
			t.Errorf("ParseConfig(%q) = %+v, want an error", bad, c)
		}
	}
}
