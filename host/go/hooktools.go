package rollingops

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// HookTools is the Juju of a running hook: the hook tools on PATH (is-leader,
// relation-ids, relation-list, relation-get, relation-set, juju-log) and juju-exec for
// dispatch. It is the default Config.Juju.
type HookTools struct {
	// CharmDir holds the charm's dispatch script ($JUJU_CHARM_DIR when empty).
	CharmDir string
	// DispatchLog receives the output of dispatched juju-exec runs (discarded when empty).
	DispatchLog string
}

// HookToolError is a hook tool that failed.
type HookToolError struct {
	Cmd    []string
	Code   int
	Stderr string
}

func (e *HookToolError) Error() string {
	return fmt.Sprintf("%s failed (exit %d): %s", strings.Join(e.Cmd, " "), e.Code,
		strings.TrimSpace(e.Stderr))
}

func run(stdin []byte, name string, args ...string) ([]byte, error) {
	cmd := exec.Command(name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	if err := cmd.Run(); err != nil {
		code := -1
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			code = exit.ExitCode()
		} else {
			stderr.WriteString(err.Error())
		}
		return nil, &HookToolError{Cmd: append([]string{name}, args...), Code: code, Stderr: stderr.String()}
	}
	return stdout.Bytes(), nil
}

func runJSON(v any, name string, args ...string) error {
	out, err := run(nil, name, args...)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(out, v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// UnitName is $JUJU_UNIT_NAME.
func (HookTools) UnitName() string { return os.Getenv("JUJU_UNIT_NAME") }

// ModelUUID is $JUJU_MODEL_UUID.
func (HookTools) ModelUUID() string { return os.Getenv("JUJU_MODEL_UUID") }

// IsLeader runs is-leader.
func (HookTools) IsLeader() (bool, error) {
	var leader bool
	err := runJSON(&leader, "is-leader", "--format=json")
	return leader, err
}

// RelationIDs runs relation-ids.
func (HookTools) RelationIDs(endpoint string) ([]int, error) {
	var names []string
	if err := runJSON(&names, "relation-ids", endpoint, "--format=json"); err != nil {
		return nil, err
	}
	ids := make([]int, 0, len(names))
	for _, name := range names {
		_, number, _ := strings.Cut(name, ":")
		id, err := strconv.Atoi(number)
		if err != nil {
			return nil, fmt.Errorf("relation-ids: unexpected id %q", name)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// RelationUnits runs relation-list.
func (HookTools) RelationUnits(relationID int) ([]string, error) {
	var units []string
	err := runJSON(&units, "relation-list", "-r", strconv.Itoa(relationID), "--format=json")
	return units, err
}

// RelationGet runs relation-get (with --app for the application's bag).
func (h HookTools) RelationGet(relationID int, unit string) (map[string]string, error) {
	args := []string{"-r", strconv.Itoa(relationID), "--format=json", "-"}
	if unit == AppBag {
		app, _, _ := strings.Cut(h.UnitName(), "/")
		args = append(args, app, "--app")
	} else {
		args = append(args, unit)
	}
	var bag map[string]string
	err := runJSON(&bag, "relation-get", args...)
	return bag, err
}

// RelationSet runs relation-set with the pairs as a file on stdin.
func (HookTools) RelationSet(relationID int, app bool, pairs []KeyValue) error {
	values := make(map[string]string, len(pairs))
	for _, p := range pairs {
		values[p.Key] = p.Value
	}
	// JSON is YAML, which is what --file takes.
	content, err := json.Marshal(values)
	if err != nil {
		return err
	}
	args := []string{"-r", strconv.Itoa(relationID)}
	if app {
		args = append(args, "--app")
	}
	_, err = run(content, "relation-set", append(args, "--file", "-")...)
	return err
}

// Log runs juju-log, or writes to stderr when it fails.
func (HookTools) Log(level LogLevel, message string) {
	if _, err := run(nil, "juju-log", "--log-level", level.String(), "--", message); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %s\n", level, message)
	}
}

var hookName = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,63}$`)

// Dispatch starts `juju-exec -u <unit> JUJU_DISPATCH_PATH=hooks/<event> <charm>/dispatch`
// in its own session and returns at once: juju-exec waits for this hook to finish.
func (h HookTools) Dispatch(event string) error {
	if !hookName.MatchString(event) {
		return fmt.Errorf("refusing to dispatch %q: not a hook name", event)
	}
	jujuExec, err := findJujuExec()
	if err != nil {
		return err
	}
	charmDir := h.CharmDir
	if charmDir == "" {
		charmDir = os.Getenv("JUJU_CHARM_DIR")
	}
	command := "JUJU_DISPATCH_PATH=hooks/" + event + " " + filepath.Join(charmDir, "dispatch")
	cmd := exec.Command(jujuExec, "-u", h.UnitName(), command)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "JUJU_CONTEXT_ID=") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if h.DispatchLog != "" {
		if f, err := os.OpenFile(h.DispatchLog, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err == nil {
			defer f.Close()
			cmd.Stdout, cmd.Stderr = f, f
		}
	}
	if info, err := os.Stat(charmDir); err == nil && info.IsDir() {
		cmd.Dir = charmDir
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	return cmd.Process.Release()
}

func findJujuExec() (string, error) {
	if path, err := exec.LookPath("juju-exec"); err == nil {
		return path, nil
	}
	for _, candidate := range []string{"/usr/bin/juju-exec", "/charm/bin/juju-exec"} {
		if info, err := os.Stat(candidate); err == nil && info.Mode()&0o111 != 0 {
			return candidate, nil
		}
	}
	return "", errors.New("juju-exec not found on PATH, in /usr/bin or in /charm/bin")
}

// Now is the wall clock.
func (HookTools) Now() time.Time { return time.Now() }
