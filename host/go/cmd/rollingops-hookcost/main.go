// Command rollingops-hookcost measures what one hook costs a Go charm: loading the
// component, then a Manager (instantiate + create) and a leader's relation-changed that
// grants the lock, on a 3-unit relation whose writes are discarded (every hook makes the
// same decision). It is the Go side of host/capi/examples/hook_cost.rs.
//
//	go run ./cmd/rollingops-hookcost            # in-process table
//	go run ./cmd/rollingops-hookcost -once DIR  # one hook, runtime cached in DIR
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sort"
	"time"

	rollingops "github.com/rollingops/rollingops/host/go"
)

// frozen is app/0, the leader, over three waiting units; writes are discarded.
type frozen struct{}

func (frozen) UnitName() string                    { return "app/0" }
func (frozen) ModelUUID() string                   { return "" }
func (frozen) IsLeader() (bool, error)             { return true, nil }
func (frozen) RelationIDs(string) ([]int, error)   { return []int{1}, nil }
func (frozen) RelationUnits(int) ([]string, error) { return []string{"app/1", "app/2"}, nil }
func (frozen) Log(rollingops.LogLevel, string)     {}
func (frozen) Dispatch(string) error               { return nil }
func (frozen) Now() time.Time                      { return time.UnixMicro(1_777_636_800_000_000) }

func (frozen) RelationSet(int, bool, []rollingops.KeyValue) error { return nil }

func (frozen) RelationGet(_ int, unit string) (map[string]string, error) {
	if unit == rollingops.AppBag {
		return map[string]string{}, nil
	}
	i := int(unit[len(unit)-1] - '0')
	op := fmt.Sprintf(`[{"callback_id":"restart","requested_at":"%d.5","max_retry":null,"attempt":0,"result":null,"kwargs":{"delay":2}}]`, 1_777_636_702-i)
	return map[string]string{"operations": op, "state": "request", "processing_backend": "peer"}, nil
}

func hook(cacheDir string) {
	m, err := rollingops.New(rollingops.Config{
		PeerRelation: "restart",
		CacheDir:     cacheDir,
		Callbacks: map[string]rollingops.Callback{
			"restart": func(context.Context, map[string]any) (rollingops.Result, error) { return "", nil },
		},
		Juju: frozen{},
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := m.HandleEvent(context.Background(), rollingops.PeerRelationChanged); err != nil {
		log.Fatal(err)
	}
	if err := m.Close(); err != nil {
		log.Fatal(err)
	}
}

func timed(runs int, f func()) (median, mean time.Duration) {
	samples := make([]time.Duration, runs)
	var total time.Duration
	for i := range samples {
		start := time.Now()
		f()
		samples[i] = time.Since(start)
		total += samples[i]
	}
	sort.Slice(samples, func(i, j int) bool { return samples[i] < samples[j] })
	return samples[runs/2], total / time.Duration(runs)
}

func us(d time.Duration) string { return fmt.Sprintf("%.1f µs", float64(d.Nanoseconds())/1e3) }

func main() {
	once := flag.String("once", "", "run one hook with the runtime cached in this directory, then exit")
	runs := flag.Int("n", 2000, "hooks to time")
	flag.Parse()
	if *once != "" {
		hook(*once)
		return
	}
	dir, err := os.MkdirTemp("", "rollingops-hookcost-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	start := time.Now()
	hook(dir) // compiles the component and caches it in dir
	first := time.Since(start)
	cached, _ := filepath.Glob(filepath.Join(dir, "*.cwasm"))
	for range 50 {
		hook(dir)
	}
	median, mean := timed(*runs, func() { hook(dir) })
	fmt.Printf("rollingops hook cost from Go (3 units, leader relation-changed that grants; %d runs)\n", *runs)
	fmt.Printf("  %-52s %10s   (%d cache file)\n", "first hook in a process: compile + cache + hook", us(first), len(cached))
	fmt.Printf("  %-52s %10s %12s\n", "", "median", "mean")
	fmt.Printf("  %-52s %10s %12s\n", "Go (cgo → C ABI): New + relation-changed + Close", us(median), us(mean))
}
