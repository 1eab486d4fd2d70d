package rollingops_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	rollingops "github.com/rollingops/rollingops/host/go"
)

// The hook tools of one leader unit, app/0, alone on peer relation restart:3: this test
// binary, linked under each tool's name in a directory put first on PATH. State lives in
// $ROLLINGOPS_FAKE_TOOLS (bags.json; juju-exec and juju-log append to exec.log and
// juju-log.log). It is what Config.Juju == nil drives: the native library's own hook-tool
// host.
var fakeTools = []string{"is-leader", "relation-ids", "relation-list", "relation-get", "relation-set", "juju-log", "juju-exec"}

// fakeHookTool runs this process as a fake hook tool when it was started as one, and
// reports whether it did (the process then exits).
func fakeHookTool() bool {
	tool := filepath.Base(os.Args[0])
	dir := os.Getenv("ROLLINGOPS_FAKE_TOOLS")
	if dir == "" || !slices.Contains(fakeTools, tool) {
		return false
	}
	if err := runFakeTool(dir, tool, os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", tool, err)
		os.Exit(1)
	}
	os.Exit(0)
	return true
}

func runFakeTool(dir, tool string, args []string) error {
	bagsPath := filepath.Join(dir, "bags.json")
	bags := map[string]map[string]string{}
	if raw, err := os.ReadFile(bagsPath); err == nil {
		if err := json.Unmarshal(raw, &bags); err != nil {
			return err
		}
	}
	appendLine := func(name, line string) error {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.WriteString(line + "\n")
		return err
	}
	emit := func(v any) error { return json.NewEncoder(os.Stdout).Encode(v) }
	owner := "app/0"
	if slices.Contains(args, "--app") {
		owner = "app"
	}
	switch tool {
	case "is-leader":
		return emit(true)
	case "relation-ids":
		return emit([]string{"restart:3"})
	case "relation-list":
		return emit([]string{})
	case "relation-get":
		bag := bags[args[len(args)-1]]
		if args[len(args)-1] == "app" || owner == "app" {
			bag = bags["app"]
		}
		return emit(bag)
	case "relation-set":
		var pairs map[string]string
		raw, err := io.ReadAll(os.Stdin)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(raw, &pairs); err != nil {
			return err
		}
		if bags[owner] == nil {
			bags[owner] = map[string]string{}
		}
		for k, v := range pairs {
			if v == "" {
				delete(bags[owner], k)
			} else {
				bags[owner][k] = v
			}
		}
		out, err := json.Marshal(bags)
		if err != nil {
			return err
		}
		return os.WriteFile(bagsPath, out, 0o644)
	case "juju-log":
		return appendLine("juju-log.log", strings.Join(args, " "))
	case "juju-exec":
		context := os.Getenv("JUJU_CONTEXT_ID")
		return appendLine("exec.log", fmt.Sprintf("%d %s context=%q", time.Now().UnixMicro(), strings.Join(args, " "), context))
	}
	return fmt.Errorf("unknown tool")
}

// execLog is the fake juju-exec's log: (when, arguments) per run.
func execLog(t *testing.T, dir string) (runs []string, at []time.Time) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(dir, "exec.log"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		if line == "" {
			continue
		}
		var micros int64
		var rest string
		if _, err := fmt.Sscanf(line, "%d", &micros); err != nil {
			t.Fatalf("exec.log line %q", line)
		}
		rest = strings.SplitN(line, " ", 2)[1]
		runs = append(runs, rest)
		at = append(at, time.UnixMicro(micros))
	}
	return runs, at
}

func TestHookToolsDispatchAfterWaitsOutsideTheHook(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for a delayed dispatch (2 s)")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	charmDir := filepath.Join(dir, "charm")
	for _, d := range []string{bin, charmDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, tool := range fakeTools {
		if err := os.Symlink(self, filepath.Join(bin, tool)); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("ROLLINGOPS_FAKE_TOOLS", dir)
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv("JUJU_UNIT_NAME", "app/0")
	t.Setenv("JUJU_MODEL_UUID", "00000000-0000-4000-8000-000000000000")
	t.Setenv("JUJU_CHARM_DIR", charmDir)
	t.Setenv("JUJU_CONTEXT_ID", "app/0-test-1")

	var restarts, checks int
	cfg := rollingops.Config{
		PeerRelation: "restart",
		BaseDir:      filepath.Join(dir, "base"),
		CacheDir:     cacheDir,
		Callbacks: map[string]rollingops.Callback{
			"restart": func(context.Context, map[string]any) (rollingops.Result, error) {
				restarts++
				return rollingops.Release, nil
			},
		},
		HealthChecks: map[string]rollingops.HealthCheck{
			"healthy": func(context.Context, map[string]any) (bool, error) {
				checks++
				return false, nil
			},
		},
	}
	// hook runs f in one hook; it returns when f started and how long it took.
	hook := func(f func(m *rollingops.Manager) error) (time.Time, time.Duration) {
		t.Helper()
		m, err := rollingops.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		start := time.Now()
		if err := f(m); err != nil {
			t.Fatal(err)
		}
		return start, time.Since(start)
	}
	ctx := context.Background()
	hook(func(m *rollingops.Manager) error {
		return m.RequestLock(ctx, "restart", nil, rollingops.RequestOptions{HealthCheck: "healthy"})
	})
	// The leader granted itself and dispatched its turn at once.
	want := "-u app/0 JUJU_DISPATCH_PATH=hooks/rollingops_lock_granted " + filepath.Join(charmDir, "dispatch") + ` context=""`
	deadline := time.Now().Add(5 * time.Second)
	for {
		runs, _ := execLog(t, dir)
		if len(runs) == 1 {
			if runs[0] != want {
				t.Fatalf("juju-exec %q, want %q", runs[0], want)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("juju-exec runs %v", runs)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The turn: the restart runs, then the health gate asks for a hook 2 s later. The hook
	// itself does not wait.
	started, took := hook(func(m *rollingops.Manager) error { return m.HandleEvent(ctx, rollingops.LockGranted) })
	if restarts != 1 || checks != 0 {
		t.Fatalf("restarts %d, checks %d", restarts, checks)
	}
	if took > time.Second {
		t.Fatalf("the hook took %v: it waited for the delayed dispatch", took)
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		runs, at := execLog(t, dir)
		if len(runs) == 2 {
			if runs[1] != want {
				t.Fatalf("delayed juju-exec %q, want %q", runs[1], want)
			}
			if waited := at[1].Sub(started); waited < 1950*time.Millisecond {
				t.Fatalf("the delayed juju-exec ran %v after the hook started, want 2 s or more", waited)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no delayed juju-exec: %v", runs)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// That hook finds the check due: it runs (false), and asks again, later.
	hook(func(m *rollingops.Manager) error { return m.HandleEvent(ctx, rollingops.LockGranted) })
	if checks != 1 {
		t.Fatalf("checks %d", checks)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, "bags.json"))
	if !strings.Contains(string(raw), `"granted_unit":"app/0"`) {
		t.Fatalf("the gate keeps the lock: %s", raw)
	}
}
