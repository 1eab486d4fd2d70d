// Command restart-charm is a small Go charm using rollingops: this binary is the charm's
// `dispatch`. It is the Go twin of host/examples/restart-charm.rs, with the same actions,
// configuration and service log, so the fake-Juju end-to-end tests can run Go, Rust and
// Python units side by side on one peer relation.
//
// It "restarts" a fake service one unit at a time. The `restart` action (dispatch path
// actions/restart, parameter `delay` in seconds; all parameters become the operation's
// kwargs) queues a restart; every other hook is handed to the library, which runs the
// callback when this unit holds the lock. The callback appends
// `<unix-micros> start <unit> <hook-context>` to the service log, sleeps `delay` seconds
// (or the `restart-delay` config option), then appends the matching `stop` line: two
// units' start..stop intervals must never overlap.
//
// Configuration (config-get): `service-log` (default <base-dir>/service.log) and
// `restart-delay` (seconds, default 1). The library's runtime directory is
// RESTART_CHARM_BASE_DIR (default /var/lib/rollingops). Juju effects go through the hook
// tools (Config.Juju is nil).
//
//	cargo build -p rollingops-capi && (cd host/go && go build -o restart-charm ./examples/restart-charm)
//	ln -s "$PWD/host/go/restart-charm" <charm-dir>/dispatch
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	rollingops "github.com/rollingops/rollingops/host/go"
)

func main() {
	if err := run(context.Background()); err != nil {
		// The hook fails (Juju discards its relation writes and retries it); say why in the
		// unit's log as well as on stderr.
		message := "restart-charm (go): " + err.Error()
		fmt.Fprintln(os.Stderr, message)
		_ = exec.Command("juju-log", "--log-level", "ERROR", "--", message).Run()
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	baseDir := os.Getenv("RESTART_CHARM_BASE_DIR")
	if baseDir == "" {
		baseDir = rollingops.DefaultBaseDir
	}
	unit := os.Getenv("JUJU_UNIT_NAME")
	cfg := rollingops.Config{
		PeerRelation: "restart",
		BaseDir:      baseDir,
		Callbacks: map[string]rollingops.Callback{
			"restart": func(ctx context.Context, kwargs map[string]any) (rollingops.Result, error) {
				return restart(unit, baseDir, kwargs)
			},
		},
	}
	m, err := rollingops.New(cfg)
	if err != nil {
		return err
	}
	defer m.Close()

	dispatchPath := os.Getenv("JUJU_DISPATCH_PATH")
	if action, ok := strings.CutPrefix(dispatchPath, "actions/"); ok {
		if action != "restart" {
			return fmt.Errorf("unknown action %q", action)
		}
		// The action's parameters (delay, …) become the operation's kwargs.
		var params map[string]any
		if err := hookTool(&params, "action-get", "--format=json"); err != nil {
			return err
		}
		if err := m.RequestAsyncLock(ctx, "restart", params, nil); err != nil {
			return err
		}
		state, err := m.State()
		if err != nil {
			return err
		}
		fmt.Printf("restart queued: %q\n", state.Status)
		return nil
	}
	if ev, ok := rollingops.EventForHook(cfg, os.Getenv); ok {
		return m.HandleEvent(ctx, ev)
	}
	return nil
}

// hookTool runs a hook tool that prints JSON.
func hookTool(v any, name string, args ...string) error {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		if exit, ok := err.(*exec.ExitError); ok {
			return fmt.Errorf("%s: %v: %s", name, err, strings.TrimSpace(string(exit.Stderr)))
		}
		return fmt.Errorf("%s: %w", name, err)
	}
	return json.Unmarshal(out, v)
}

func appendLine(path, line string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	// One write per line: appends of a short line are atomic across processes.
	if _, err := f.WriteString(line + "\n"); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// restart is the fake service's restart.
func restart(unit, baseDir string, kwargs map[string]any) (rollingops.Result, error) {
	var config map[string]any
	if err := hookTool(&config, "config-get", "--format=json"); err != nil {
		return "", err
	}
	log, _ := config["service-log"].(string)
	if log == "" {
		log = filepath.Join(baseDir, "service.log")
	}
	delay, ok := kwargs["delay"].(float64)
	if !ok {
		delay, ok = config["restart-delay"].(float64)
	}
	if !ok {
		delay = 1
	}
	context := os.Getenv("JUJU_CONTEXT_ID")
	if context == "" {
		context = "-"
	}
	if err := appendLine(log, fmt.Sprintf("%d start %s %s", time.Now().UnixMicro(), unit, context)); err != nil {
		return "", err
	}
	time.Sleep(time.Duration(max(delay, 0) * float64(time.Second)))
	if err := appendLine(log, fmt.Sprintf("%d stop %s %s", time.Now().UnixMicro(), unit, context)); err != nil {
		return "", err
	}
	return rollingops.Release, nil
}
