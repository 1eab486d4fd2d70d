package rollingops

import (
	"context"
	"time"
)

// Juju is what the library needs from Juju, one method per hook tool (the WIT `juju`
// interface). The library calls it synchronously during a Manager call, on the calling
// goroutine. Leave Config.Juju nil to use the real hook tools (carried by the native
// library); rollingopstest.Model is an in-memory implementation for tests.
//
// Errors travel to the component as the WIT error case they match with errors.Is (for
// example ErrNoRelation), otherwise as ErrHost with the error's text.
type Juju interface {
	// UnitName is this unit's name, "app/0" (JUJU_UNIT_NAME).
	UnitName() string
	// ModelUUID is the model's UUID (JUJU_MODEL_UUID).
	ModelUUID() string
	// IsLeader reports leadership (is-leader).
	IsLeader() (bool, error)
	// RelationIDs lists the relation ids on an endpoint (relation-ids).
	RelationIDs(endpoint string) ([]int, error)
	// RelationUnits lists the remote units on a relation, without this unit
	// (relation-list).
	RelationUnits(relationID int) ([]string, error)
	// RelationGet reads a databag: the unit's, or the application's when unit is AppBag
	// (relation-get --format=json).
	RelationGet(relationID int, unit string) (map[string]string, error)
	// RelationSet writes keys, in order, to this unit's bag or (leader only) the
	// application's bag; an empty value deletes the key (relation-set).
	RelationSet(relationID int, app bool, pairs []KeyValue) error
	// Log writes a line to the Juju log (juju-log).
	Log(level LogLevel, message string)
	// Dispatch runs hook `event` on this unit once the current hook has finished, and
	// returns at once (juju-exec in the background).
	Dispatch(event string) error
	// Now is the wall clock.
	Now() time.Time
}

// AppBag names the application's databag in Juju.RelationGet.
const AppBag = ""

// KeyValue is one databag write.
type KeyValue struct {
	Key   string
	Value string
}

// Secrets is implemented by a Juju that can read and create application secrets (etcd
// mode keeps the shared client certificate in one). Without it, secret access fails with
// ErrHost.
type Secrets interface {
	// SecretGet reads a secret by label or id; ok is false when it does not exist.
	SecretGet(labelOrID string) (content map[string]string, ok bool, err error)
	// SecretAdd creates an application-owned secret with a label and returns its id.
	SecretAdd(label string, content map[string]string) (id string, err error)
	// SecretGrant lets the remote application of a relation read a secret (secret-grant).
	SecretGrant(id string, relationID int) error
}

// RemoteApps is implemented by a Juju that can read a remote application's databag
// (relation-get --app - <remote-app>), which etcd mode needs for the etcd relation.
type RemoteApps interface {
	RelationGetRemoteApp(relationID int) (map[string]string, error)
}

// Sleeper is implemented by a Juju with its own clock (the etcd worker and the sync lock
// sleep). Without it, the library sleeps for real.
type Sleeper interface {
	Sleep(d time.Duration)
}

// DelayedDispatcher is implemented by a Juju that can run a hook later: health re-checks
// and grant timeouts ask for one (the WIT import dispatch-after). DispatchAfter must return
// at once and never sleep in the hook: start something that waits outside it (with the hook
// tools, a detached `sh -c 'sleep …; exec juju-exec …'`, which is what the native library
// does when Config.Juju is nil). Without it, the request fails with ErrHost, the component
// logs it, and the next hook (update-status at the latest) picks the turn up.
type DelayedDispatcher interface {
	// DispatchAfter runs hook `event` on this unit no sooner than delay from now.
	DispatchAfter(event string, delay time.Duration) error
}

// WorkerStarter is implemented by a Juju that can start the etcd worker: a detached
// process, outside any hook, that builds a Manager and runs its worker loop. Without it,
// etcd mode reports ErrEtcdNotConfigured.
type WorkerStarter interface {
	StartWorker() error
}

// LogLevel is a juju-log level.
type LogLevel int

// The levels, as `juju-log --log-level`.
const (
	LogDebug LogLevel = iota
	LogInfo
	LogWarning
	LogError
)

func (l LogLevel) String() string {
	switch l {
	case LogDebug:
		return "DEBUG"
	case LogInfo:
		return "INFO"
	case LogWarning:
		return "WARNING"
	default:
		return "ERROR"
	}
}

// Result is what a callback asks the lock to do next (OperationResult).
type Result string

// The results. The empty Result means Release (like Python's None).
const (
	// Release: done; drop the operation and hand the lock on.
	Release Result = "release"
	// RetryRelease: retry later and let other units go first.
	RetryRelease Result = "retry-release"
	// RetryHold: retry now, keeping the lock.
	RetryHold Result = "retry-hold"
)

// Callback is a charm operation run under the lock, in a hook of the unit that requested
// it. kwargs are the request's kwargs after a JSON round trip (numbers are float64; the
// exact JSON is KwargsJSON(ctx)). A non-nil error means RetryRelease, as an exception does
// in the reference.
type Callback func(ctx context.Context, kwargs map[string]any) (Result, error)

// HealthCheck is a charm's health check, registered in Config.HealthChecks and named by
// RequestOptions.HealthCheck or Roll.HealthCheck. After the operation it gates has run, the
// unit keeps the lock until the check returns true; it is re-run in later hooks (2 s after
// the operation, then backing off to 30 s apart) until it passes or its timeout expires. A
// non-nil error counts as not healthy yet. kwargs are the gated operation's.
type HealthCheck func(ctx context.Context, kwargs map[string]any) (bool, error)

// SyncLockBackend is a charm's own synchronous lock (the reference's SyncLockBackend).
type SyncLockBackend interface {
	// Acquire blocks until the lock is held. timeout is NoTimeout to wait forever. On
	// timeout it returns an error matching ErrTimeout (or context.DeadlineExceeded).
	Acquire(ctx context.Context, timeout time.Duration) error
	// Release releases the lock.
	Release(ctx context.Context) error
}

// NoTimeout makes AcquireSyncLock wait forever.
const NoTimeout time.Duration = -1

// Status is a unit's high-level status (RollingOpsStatus).
type Status string

// The statuses.
const (
	// StatusNotReady: the peer relation does not exist yet.
	StatusNotReady Status = "not-ready"
	// StatusWaiting: operations are queued and the unit waits for the lock.
	StatusWaiting Status = "waiting"
	// StatusGranted: this unit holds the lock.
	StatusGranted Status = "granted"
	// StatusIdle: nothing queued.
	StatusIdle Status = "idle"
)

// Backend is the backend that owns a unit's queue (ProcessingBackend).
type Backend string

// The backends.
const (
	BackendPeer Backend = "peer"
	BackendEtcd Backend = "etcd"
)

// State is a unit's RollingOpsState.
type State struct {
	Status            Status  `json:"status"`
	ProcessingBackend Backend `json:"processing_backend"`
}

type kwargsKey struct{}

// KwargsJSON returns, inside a Callback, the kwargs exactly as the component passed them
// (a JSON object).
func KwargsJSON(ctx context.Context) (string, bool) {
	s, ok := ctx.Value(kwargsKey{}).(string)
	return s, ok
}
