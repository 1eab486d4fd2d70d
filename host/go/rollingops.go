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
	// HealthChecks are the charm's health checks, by id (see HealthCheck). Their ids share
	// one namespace with Callbacks.
	HealthChecks map[string]HealthCheck
	// SyncLocks are the charm's sync-lock backends, by id (sync_lock_targets).
	SyncLocks map[string]SyncLockBackend
	// Juju is the unit's view of Juju. When nil, the native library carries every Juju
	// effect itself with the hook tools on PATH (is-leader, relation-*, juju-log, secret-*,
	// and juju-exec for dispatch: started detached, after a detached sleep for a delayed
	// dispatch, so a hook never waits), as the Rust host and the CLI do, reading
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
	for id, hc := range cfg.HealthChecks {
		if hc == nil {
			return nil, &Error{Kind: ErrInvalidArgument, Class: "ValueError",
				Message: "health check " + id + " is nil"}
		}
		if _, dup := cfg.Callbacks[id]; dup {
			return nil, &Error{Kind: ErrInvalidArgument, Class: "ValueError",
				Message: "id " + id + " is both a callback and a health check"}
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
		"callback_ids":       callbackIDs(cfg.Callbacks, cfg.HealthChecks),
		"sync_lock_ids":      sortedKeys(cfg.SyncLocks),
	}
	configJSON, err := json.Marshal(wire)
	if err != nil {
		return nil, err
	}
	s, err := newSession(cacheDir, string(configJSON), cfg.Juju, cfg.Callbacks, cfg.HealthChecks, cfg.SyncLocks)
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
	return kwargsError(m.s.requestAsyncLock(ctx, callbackID, kwargsJSON, retry), problem)
}

// kwargsError explains, in Go terms, a request the component rejected because its kwargs
// could not be encoded (problem). The component checks in the reference's order (callback
// id, relation, kwargs), so the kwargs are only blamed when it blamed them.
func kwargsError(err, problem error) error {
	if e, ok := err.(*Error); ok && problem != nil && e.Kind == ErrInvalidLockRequest &&
		strings.HasPrefix(e.Message, failedRequest) {
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

// RequestOptions are the options of RequestLock. The zero value is RequestAsyncLock's
// behaviour with a nil maxRetry.
type RequestOptions struct {
	// MaxRetry is the retry budget after the first run (see MaxRetry); nil retries forever.
	MaxRetry *int
	// HealthCheck is the id of a registered HealthCheck (or Callback returning "true") that
	// must pass before the lock moves on; "" for none.
	HealthCheck string
	// HealthTimeout is how long to wait for the check before handing the lock on anyway,
	// rounded up to whole seconds; 0 is the library's default (300 s).
	HealthTimeout time.Duration
	// GenerationKwarg names a keyword argument that receives the grant generation (a
	// number that grows with every grant), for fencing; "" for none.
	GenerationKwarg string
}

// RequestLock queues an operation with options (request-lock): like RequestAsyncLock, and
// with a health check the unit keeps the lock after the operation until the check passes.
// Errors: those of RequestAsyncLock, and ErrInvalidLockRequest for an unknown health check,
// a blank GenerationKwarg or a negative HealthTimeout.
func (m *Manager) RequestLock(ctx context.Context, callbackID string, kwargs map[string]any, opts RequestOptions) error {
	timeout, err := seconds(opts.HealthTimeout, "HealthTimeout", ErrInvalidLockRequest)
	if err != nil {
		return err
	}
	wire := map[string]any{
		"health_check":           optional(opts.HealthCheck),
		"health_timeout_seconds": timeout,
		"generation_kwarg":       optional(opts.GenerationKwarg),
	}
	if opts.MaxRetry != nil {
		wire["max_retry"] = *opts.MaxRetry
	}
	optionsJSON, err := json.Marshal(wire)
	if err != nil {
		return err
	}
	kwargsJSON, problem := encodeKwargs(kwargs)
	return kwargsError(m.s.requestLock(ctx, callbackID, kwargsJSON, string(optionsJSON)), problem)
}

// Policy is the leader's scheduling policy (set-policy). The zero value is the reference
// behaviour: one holder, no grant timeout, oldest request first, pause on a failed health
// check. Each part is in force only once every unit on the relation supports it.
type Policy struct {
	// MaxConcurrent is how many units may hold the lock at once; 0 means 1.
	MaxConcurrent int
	// GrantTimeout reclaims a grant its holder has not finished within this time (rounded
	// up to whole seconds); 0 never does.
	GrantTimeout time.Duration
	// RankOrdering orders waiting units by SetRank (lowest first) instead of request age.
	RankOrdering bool
	// ContinueOnHealthFailure keeps granting when a health check times out; by default
	// the leader pauses grants (see Manager.Resume).
	ContinueOnHealthFailure bool
}

// SetPolicy sets the scheduling policy. Leader only: on another unit it fails with
// ErrInvalidArgument, as it does for a negative field.
func (m *Manager) SetPolicy(ctx context.Context, p Policy) error {
	if p.MaxConcurrent < 0 || p.MaxConcurrent > math.MaxUint32 {
		return invalidArgument("MaxConcurrent must be between 0 and 4294967295")
	}
	grantTimeout, err := seconds(p.GrantTimeout, "GrantTimeout", ErrInvalidArgument)
	if err != nil {
		return err
	}
	maxConcurrent := max(p.MaxConcurrent, 1)
	policyJSON, err := json.Marshal(map[string]any{
		"max_concurrent":         maxConcurrent,
		"grant_timeout_seconds":  grantTimeout,
		"rank_ordering":          p.RankOrdering,
		"halt_on_health_failure": !p.ContinueOnHealthFailure,
	})
	if err != nil {
		return err
	}
	return m.s.setPolicy(ctx, string(policyJSON))
}

// SetRank sets this unit's rank: when the leader orders by rank, lower ranks go first.
func (m *Manager) SetRank(ctx context.Context, rank int) error {
	return m.s.setRank(ctx, int64(rank))
}

// Pause stops granting the lock (holders finish their turn); reason shows in the status.
// changed is false when grants were already paused. Leader only (ErrInvalidArgument).
func (m *Manager) Pause(ctx context.Context, reason string) (changed bool, err error) {
	n, err := m.control(ctx, map[string]any{"pause": reason})
	return n > 0, err
}

// Resume grants the lock again; changed is false when grants were not paused. Leader only.
func (m *Manager) Resume(ctx context.Context) (changed bool, err error) {
	n, err := m.control(ctx, "resume")
	return n > 0, err
}

// Cancel drops this unit's queued operations that have not started (only those of
// callbackID, unless it is ""), and returns how many it dropped.
func (m *Manager) Cancel(ctx context.Context, callbackID string) (cancelled int, err error) {
	n, err := m.control(ctx, map[string]any{"cancel": optional(callbackID)})
	return int(n), err
}

// ForceRelease ends the grant of unit (every grant when unit is ""), and returns how many
// it ended; the holder's generation becomes stale. Leader only; a unit that does not hold
// the lock is ErrInvalidArgument.
func (m *Manager) ForceRelease(ctx context.Context, unit string) (released int, err error) {
	n, err := m.control(ctx, map[string]any{"force-release": optional(unit)})
	return int(n), err
}

func (m *Manager) control(ctx context.Context, action any) (uint32, error) {
	b, err := json.Marshal(action)
	if err != nil {
		return 0, err
	}
	return m.s.control(ctx, string(b))
}

// Roll is an application-wide roll (start-roll): every unit runs CallbackID once, in turn.
type Roll struct {
	// CallbackID is the operation every unit runs.
	CallbackID string
	// Kwargs are its keyword arguments.
	Kwargs map[string]any
	// HealthCheck gates each unit's hand-off, as in RequestOptions; "" for none.
	HealthCheck string
	// HealthTimeout is as in RequestOptions.
	HealthTimeout time.Duration
	// OnComplete is a callback the leader runs once every unit has finished, with kwargs
	// {"generation": N}; "" for none.
	OnComplete string
}

// StartRoll starts an application-wide roll and returns its generation. Leader only
// (ErrInvalidArgument, as is a roll still in progress); ErrInvalidLockRequest for unknown
// callback ids or kwargs that do not encode.
func (m *Manager) StartRoll(ctx context.Context, r Roll) (generation uint64, err error) {
	timeout, err := seconds(r.HealthTimeout, "HealthTimeout", ErrInvalidLockRequest)
	if err != nil {
		return 0, err
	}
	optionsJSON, err := json.Marshal(map[string]any{
		"health_check":           optional(r.HealthCheck),
		"health_timeout_seconds": timeout,
		"on_complete":            optional(r.OnComplete),
	})
	if err != nil {
		return 0, err
	}
	kwargsJSON, problem := encodeKwargs(r.Kwargs)
	if problem != nil {
		return 0, &Error{Kind: ErrInvalidLockRequest, Class: "RollingOpsInvalidLockRequestError",
			Message: "Failed to start the roll: " + problem.Error()}
	}
	return m.s.startRoll(ctx, r.CallbackID, kwargsJSON, string(optionsJSON))
}

// seconds converts a duration option to whole seconds (rounded up): nil for 0, an error of
// kind for a negative one.
func seconds(d time.Duration, name string, kind error) (*uint32, error) {
	switch {
	case d == 0:
		return nil, nil
	case d < 0:
		return nil, newError(codeFor(kind), name+" must not be negative")
	}
	s := uint32(min(math.Ceil(d.Seconds()), math.MaxUint32))
	return &s, nil
}

func invalidArgument(message string) error {
	return &Error{Kind: ErrInvalidArgument, Class: "ValueError", Message: message}
}

// callbackIDs are the ids of the callbacks and health checks, sorted.
func callbackIDs(callbacks map[string]Callback, checks map[string]HealthCheck) []string {
	ids := sortedKeys(callbacks)
	ids = append(ids, sortedKeys(checks)...)
	sort.Strings(ids)
	return ids
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
