// Package rollingops is the rolling-operations lock for Juju charms written in Go.
//
// Charms must restart or reconfigure their units one at a time. A Manager queues this
// unit's operations on the peer relation and runs each one, as a Callback, when the lock
// reaches the unit; the leader hands the lock from unit to unit. The decisions, and the
// databag format shared with Python's charmlibs.rollingops 1.x and the other hosts of this
// project, all live in one WebAssembly component (rollingops.wasm). This package runs that
// component in-process through the Rust host library's C ABI (host/capi), and supplies it
// with Juju (the Juju interface), the charm's callbacks and its sync-lock backends.
//
// Build the native library first, from the repository root:
//
//	cargo build -p rollingops-capi            # links with the default build
//	cargo build --release -p rollingops-capi  # links with -tags rollingops_release
//
// In a charm, build one Manager per hook (Config.Juju nil: the hook tools):
//
//	cfg := rollingops.Config{
//		PeerRelation: "restart",
//		Callbacks: map[string]rollingops.Callback{
//			"restart": func(ctx context.Context, kwargs map[string]any) (rollingops.Result, error) {
//				return rollingops.Release, restartWorkload(ctx)
//			},
//		},
//	}
//	m, err := rollingops.New(cfg)
//	if err != nil {
//		return err
//	}
//	defer m.Close()
//	if ev, ok := rollingops.EventForHook(cfg, os.Getenv); ok {
//		err = m.HandleEvent(ctx, ev)
//	}
//
// A Manager is not safe for concurrent use: it serves one hook, and a call made while
// another is running (from another goroutine, or from inside a Callback) fails with
// ErrBadCall.
package rollingops

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"
)

// DefaultBaseDir is the runtime directory when Config.BaseDir is empty.
const DefaultBaseDir = "/var/lib/rollingops"

// Config is the charm's configuration of the library (RollingOpsManager's arguments).
type Config struct {
	// PeerRelation is the peer endpoint holding all state (required).
	PeerRelation string
	// EtcdRelation is the etcd endpoint; empty for peer-only charms.
	EtcdRelation string
	// ClusterID is the etcd lock scope; empty for peer-only charms.
	ClusterID string
	// BaseDir is the runtime directory (DefaultBaseDir when empty). The component's files
	// are confined to it, and the compiled component is cached in it.
	BaseDir string
	// CharmDir is the charm directory, where etcdctl is found (usr/bin/etcdctl);
	// $JUJU_CHARM_DIR, else ".", when empty.
	CharmDir string
	// CacheDir overrides where the compiled component is cached (BaseDir when empty).
	CacheDir string
	// Callbacks are the operations the charm can request, by id (callback_targets).
	Callbacks map[string]Callback
	// SyncLocks are the charm's sync-lock backends, by id (sync_lock_targets).
	SyncLocks map[string]SyncLockBackend
	// Juju is the unit's view of Juju. When nil, the native library carries every Juju
	// effect itself with the hook tools on PATH (is-leader, relation-*, juju-log, secret-*,
	// and juju-exec for dispatch), as the Rust host and the CLI do, reading
	// JUJU_UNIT_NAME, JUJU_MODEL_UUID and JUJU_CHARM_DIR: what a charm wants in a hook.
	Juju Juju
}

// Manager is one hook's RollingOpsManager. Build it with New and Close it when the hook
// ends.
type Manager struct {
	s *session
}

// New instantiates the component and builds this hook's manager. It fails with
// ErrInvalidArgument for a ClusterID without an EtcdRelation, and with ErrLoad when the
// component cannot be loaded.
func New(cfg Config) (*Manager, error) {
	for id, cb := range cfg.Callbacks {
		if cb == nil {
			return nil, &Error{Kind: ErrInvalidArgument, Class: "ValueError",
				Message: "callback " + id + " is nil"}
		}
	}
	for id, b := range cfg.SyncLocks {
		if b == nil {
			return nil, &Error{Kind: ErrInvalidArgument, Class: "ValueError",
				Message: "sync lock backend " + id + " is nil"}
		}
	}
	baseDir := cfg.BaseDir
	if baseDir == "" {
		baseDir = DefaultBaseDir
	}
	charmDir := cfg.CharmDir
	if charmDir == "" {
		charmDir = os.Getenv("JUJU_CHARM_DIR")
	}
	if charmDir == "" {
		charmDir = "."
	}
	cacheDir := cfg.CacheDir
	if cacheDir == "" {
		cacheDir = baseDir
	}
	wire := map[string]any{
		"hook_tools":         cfg.Juju == nil,
		"peer_relation_name": cfg.PeerRelation,
		"etcd_relation_name": optional(cfg.EtcdRelation),
		"cluster_id":         optional(cfg.ClusterID),
		"base_dir":           baseDir,
		"charm_dir":          charmDir,
		"callback_ids":       sortedKeys(cfg.Callbacks),
		"sync_lock_ids":      sortedKeys(cfg.SyncLocks),
	}
	configJSON, err := json.Marshal(wire)
	if err != nil {
		return nil, err
	}
	s, err := newSession(cacheDir, string(configJSON), cfg.Juju, cfg.Callbacks, cfg.SyncLocks)
	if err != nil {
		return nil, err
	}
	m := &Manager{s: s}
	// A Manager that is dropped without Close still frees its native session.
	runtime.AddCleanup(m, func(s *session) { _ = s.close() }, s)
	return m, nil
}

// Close ends the hook and frees the native session. Calls after Close fail with
// ErrBadCall.
func (m *Manager) Close() error {
	return m.s.close()
}

// MaxRetry returns a max-retry budget for RequestAsyncLock: n retries after the first run
// (0 runs once). A nil budget retries forever.
func MaxRetry(n int) *int {
	return &n
}

// RequestAsyncLock queues an operation for this unit (request_async_lock): callback
// callbackID runs with kwargs when the lock reaches this unit. maxRetry nil retries
// forever. Errors: ErrInvalidLockRequest for an unknown callback id, kwargs that do not
// encode as JSON, or a negative maxRetry; ErrNoRelation before the peer relation exists.
func (m *Manager) RequestAsyncLock(ctx context.Context, callbackID string, kwargs map[string]any, maxRetry *int) error {
	kwargsJSON, problem := encodeKwargs(kwargs)
	var retry *int64
	if maxRetry != nil {
		r := int64(*maxRetry)
		retry = &r
	}
	err := m.s.requestAsyncLock(ctx, callbackID, kwargsJSON, retry)
	if e, ok := err.(*Error); ok && problem != nil && e.Kind == ErrInvalidLockRequest &&
		strings.HasPrefix(e.Message, failedRequest) {
		// The component checks in the reference's order (callback id, relation, kwargs);
		// when it rejects what could not be encoded, say why in Go terms.
		return &Error{Kind: e.Kind, Class: e.Class, Message: failedRequest + ": " + problem.Error()}
	}
	return err
}

const failedRequest = "Failed to create the lock request"

// encodeKwargs encodes kwargs for the component; on failure it returns "" (which the
// component rejects in its own order of checks) and the reason.
func encodeKwargs(kwargs map[string]any) (string, error) {
	if kwargs == nil {
		return "{}", nil
	}
	var b strings.Builder
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(kwargs); err != nil {
		return "", err
	}
	return strings.TrimSuffix(b.String(), "\n"), nil
}

// HandleEvent hands a hook to the manager: it schedules (leader), runs this unit's
// operation when it holds the lock, releases and hands the lock on.
func (m *Manager) HandleEvent(ctx context.Context, ev Event) error {
	return m.s.handleEvent(ctx, ev)
}

// State is this unit's RollingOpsState.
func (m *Manager) State() (State, error) {
	return m.s.state()
}

// IsWaiting reports whether unit (AppBag/"" for this unit) has queued operations.
// ErrInvalidArgument: the unit is not on the peer relation.
func (m *Manager) IsWaiting(unit string) (bool, error) {
	return m.s.isWaiting(unit, "")
}

// IsWaitingCallback reports whether unit ("" for this unit) has a queued operation for
// callbackID.
func (m *Manager) IsWaitingCallback(callbackID, unit string) (bool, error) {
	return m.s.isWaiting(unit, callbackID)
}

// AcquireSyncLock takes the synchronous lock (etcd when available, else the SyncLocks
// backend backendID) and returns the function that releases it. timeout is rounded up to
// whole seconds; NoTimeout waits forever. A backend timeout is ErrTimeout; an unknown or
// failing backend is ErrSyncLock.
func (m *Manager) AcquireSyncLock(ctx context.Context, backendID string, timeout time.Duration) (release func() error, err error) {
	var seconds *uint32
	if timeout >= 0 {
		s := uint32(min(math.Ceil(timeout.Seconds()), math.MaxUint32))
		seconds = &s
	}
	if err := m.s.acquireSyncLock(ctx, backendID, seconds); err != nil {
		return nil, err
	}
	released := false
	return func() error {
		if released {
			return nil
		}
		released = true
		return m.s.releaseSyncLock(ctx, backendID)
	}, nil
}

// Describe is a one-line JSON view of the peer queues and the lock, for people.
func (m *Manager) Describe() (string, error) {
	return m.s.describe()
}

func optional(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
