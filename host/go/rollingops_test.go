package rollingops_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	rollingops "github.com/rollingops/rollingops/host/go"
	"github.com/rollingops/rollingops/host/go/rollingopstest"
)

// cacheDir holds the compiled component for the whole test binary.
var cacheDir string

func TestMain(m *testing.M) {
	if fakeHookTool() {
		return
	}
	dir, err := os.MkdirTemp("", "rollingops-go-test-")
	if err != nil {
		panic(err)
	}
	cacheDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// restart is the test charm's callback registry: `restart` counts its calls per unit.
type charm struct {
	model *rollingopstest.Model
	calls []call
	// hook lets a test change what a callback does.
	hook func(unit string, kwargs map[string]any) (rollingops.Result, error)
	sync map[string]rollingops.SyncLockBackend
	// checks are the charm's health checks.
	checks map[string]rollingops.HealthCheck
	// juju wraps a unit's Juju (nil: the model's unit as is).
	juju func(*rollingopstest.Unit) rollingops.Juju
}

type call struct {
	unit       string
	id         string
	kwargsJSON string
	granted    string
}

func newCharm(units ...string) *charm {
	return &charm{model: rollingopstest.NewModel("restart", units...)}
}

func (c *charm) callbacks(unit string) map[string]rollingops.Callback {
	cb := func(id string) rollingops.Callback {
		return func(ctx context.Context, kwargs map[string]any) (rollingops.Result, error) {
			raw, _ := rollingops.KwargsJSON(ctx)
			c.calls = append(c.calls, call{unit, id, raw, c.model.Bag(rollingops.AppBag)["granted_unit"]})
			if c.hook != nil {
				return c.hook(unit, kwargs)
			}
			return rollingops.Release, nil
		}
	}
	return map[string]rollingops.Callback{"restart": cb("restart"), "other": cb("other"), "done": cb("done")}
}

// manager builds unit's manager for one hook.
func (c *charm) manager(t testing.TB, unit string) *rollingops.Manager {
	t.Helper()
	var juju rollingops.Juju = c.model.Unit(unit)
	if c.juju != nil {
		juju = c.juju(c.model.Unit(unit))
	}
	m, err := rollingops.New(rollingops.Config{
		PeerRelation: "restart",
		BaseDir:      cacheDir,
		Callbacks:    c.callbacks(unit),
		HealthChecks: c.checks,
		SyncLocks:    c.sync,
		Juju:         juju,
	})
	if err != nil {
		t.Fatalf("New(%s): %v", unit, err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

// settle runs queued hooks until none are left (pick nil: in order).
func (c *charm) settle(t *testing.T, r *rand.Rand) int {
	t.Helper()
	hooks := 0
	for ; ; hooks++ {
		if hooks > 500 {
			t.Fatal("the model did not settle")
		}
		var unit string
		var ev rollingops.Event
		var ok bool
		if r == nil {
			unit, ev, ok = c.model.Next()
		} else {
			unit, ev, ok = c.model.NextRandom(r)
		}
		if !ok {
			return hooks
		}
		m := c.manager(t, unit)
		if err := m.HandleEvent(context.Background(), ev); err != nil {
			t.Fatalf("%s on %s: %v", ev, unit, err)
		}
		if err := m.Close(); err != nil {
			t.Fatal(err)
		}
	}
}

func libraryError(t *testing.T, err error, kind error) *rollingops.Error {
	t.Helper()
	if !errors.Is(err, kind) {
		t.Fatalf("error %v does not match %v", err, kind)
	}
	var e *rollingops.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is not a *rollingops.Error", err)
	}
	return e
}

func TestRequestStoresTheOperation(t *testing.T) {
	c := newCharm("app/0", "app/1")
	m := c.manager(t, "app/1")
	ctx := context.Background()
	if err := m.RequestAsyncLock(ctx, "restart", map[string]any{"delay": 10}, nil); err != nil {
		t.Fatal(err)
	}
	bag := c.model.Bag("app/1")
	want := `[{"callback_id":"restart","requested_at":"1777636800.0","max_retry":null,"attempt":0,"result":null,"kwargs":{"delay":10}}]`
	if bag["operations"] != want || bag["state"] != "request" {
		t.Fatalf("bag %v", bag)
	}
	if err := m.RequestAsyncLock(ctx, "other", nil, rollingops.MaxRetry(3)); err != nil {
		t.Fatal(err)
	}
	if got := c.model.Bag("app/1")["operations"]; !strings.Contains(got, `"callback_id":"other","requested_at":"1777636800.0","max_retry":3`) {
		t.Fatalf("operations %s", got)
	}
	st, err := m.State()
	if err != nil || st != (rollingops.State{Status: rollingops.StatusWaiting, ProcessingBackend: rollingops.BackendPeer}) {
		t.Fatalf("state %v %v", st, err)
	}
	if len(c.calls) != 0 || len(c.model.Dispatched()) != 0 {
		t.Fatalf("a non-leader's request runs nothing: %v", c.calls)
	}
}

func TestBadRequestsAreTypedErrorsAndChangeNothing(t *testing.T) {
	c := newCharm("app/0", "app/1")
	m := c.manager(t, "app/1")
	ctx := context.Background()
	cases := []struct {
		name     string
		id       string
		kwargs   map[string]any
		maxRetry *int
		message  string
	}{
		{"unknown callback", "nope", nil, nil, "Unknown callback_id: nope"},
		{"blank callback", "", nil, nil, "Unknown callback_id: "},
		{"NaN kwargs", "restart", map[string]any{"x": math.NaN()}, nil,
			"Failed to create the lock request: json: unsupported value: NaN"},
		{"channel kwargs", "restart", map[string]any{"c": make(chan int)}, nil,
			"Failed to create the lock request: json: unsupported type: chan int"},
		{"negative max retry", "restart", nil, rollingops.MaxRetry(-1), "Failed to create the lock request"},
		{"very negative max retry", "restart", nil, rollingops.MaxRetry(-5), "Failed to create the lock request"},
	}
	for _, tc := range cases {
		err := m.RequestAsyncLock(ctx, tc.id, tc.kwargs, tc.maxRetry)
		e := libraryError(t, err, rollingops.ErrInvalidLockRequest)
		if !strings.HasPrefix(e.Message, tc.message) || e.Class != "RollingOpsInvalidLockRequestError" {
			t.Errorf("%s: %q (%s)", tc.name, e.Message, e.Class)
		}
		if errors.Is(err, rollingops.ErrNoRelation) {
			t.Errorf("%s: matches another sentinel", tc.name)
		}
	}
	if len(c.model.Bag("app/1")) != 0 || len(c.model.Writes()) != 0 {
		t.Fatalf("bad requests wrote %v", c.model.Writes())
	}

	// No relation: NoRelation, but an unknown callback is reported first (§1.4).
	c.model.SetRelated(false)
	m = c.manager(t, "app/1")
	e := libraryError(t, m.RequestAsyncLock(ctx, "restart", nil, nil), rollingops.ErrNoRelation)
	if e.Message != "No restart peer relation yet." || e.Class != "RollingOpsNoRelationError" {
		t.Fatalf("%+v", e)
	}
	libraryError(t, m.RequestAsyncLock(ctx, "nope", nil, nil), rollingops.ErrInvalidLockRequest)
	if got := e.Error(); got != "rollingops: no relation: No restart peer relation yet." {
		t.Fatalf("Error() = %q", got)
	}
}

func TestThreeUnitRollingRestart(t *testing.T) {
	// In Juju's order, then in seeded random interleavings: every unit restarts exactly
	// once, only while it holds the grant, and never while another unit is restarting.
	for seed := -1; seed < 20; seed++ {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			var r *rand.Rand
			if seed >= 0 {
				r = rand.New(rand.NewPCG(uint64(seed), 7))
			}
			units := []string{"app/0", "app/1", "app/2"}
			c := newCharm(units...)
			restarting := ""
			c.hook = func(unit string, _ map[string]any) (rollingops.Result, error) {
				if restarting != "" {
					t.Errorf("%s restarts while %s is restarting", unit, restarting)
				}
				restarting = unit
				c.model.Advance(2 * time.Second)
				restarting = ""
				return rollingops.Release, nil
			}
			order := []string{"app/2", "app/0", "app/1"}
			if r != nil {
				r.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
			}
			for _, u := range order {
				c.model.Advance(100 * time.Millisecond)
				m := c.manager(t, u)
				if err := m.RequestAsyncLock(context.Background(), "restart", map[string]any{"delay": 2}, nil); err != nil {
					t.Fatal(err)
				}
				_ = m.Close()
			}
			hooks := c.settle(t, r)
			ran := map[string]int{}
			for _, cl := range c.calls {
				ran[cl.unit]++
				if cl.granted != cl.unit {
					t.Errorf("%s ran while the grant was %q", cl.unit, cl.granted)
				}
				if cl.kwargsJSON != `{"delay":2}` {
					t.Errorf("kwargs %s", cl.kwargsJSON)
				}
			}
			for _, u := range units {
				if ran[u] != 1 {
					t.Errorf("%s restarted %d times", u, ran[u])
				}
				if st := c.model.Bag(u)["state"]; st != "idle" {
					t.Errorf("%s ends %q", u, st)
				}
			}
			if g := c.model.Bag(rollingops.AppBag)["granted_unit"]; g != "" {
				t.Errorf("the lock is still granted to %s", g)
			}
			if r == nil {
				// In order, oldest request first.
				var got []string
				for _, cl := range c.calls {
					got = append(got, cl.unit)
				}
				if strings.Join(got, " ") != strings.Join(order, " ") {
					t.Errorf("order %v, want %v", got, order)
				}
				t.Logf("%d hooks", hooks)
			}
		})
	}
}

func TestCallbackErrorsAreRetryRelease(t *testing.T) {
	c := newCharm("app/0", "app/1", "app/2")
	failures := map[string]int{"app/1": 2}
	c.hook = func(unit string, _ map[string]any) (rollingops.Result, error) {
		if failures[unit] > 0 {
			failures[unit]--
			return "", errors.New("the workload did not come back")
		}
		return "", nil
	}
	for _, u := range []string{"app/1", "app/2"} {
		c.model.Advance(time.Second)
		if err := c.manager(t, u).RequestAsyncLock(context.Background(), "restart", nil, rollingops.MaxRetry(5)); err != nil {
			t.Fatal(err)
		}
	}
	c.settle(t, nil)
	var got []string
	for _, cl := range c.calls {
		got = append(got, cl.unit)
	}
	// app/1 fails, app/2 goes while app/1 waits (retry-release), then app/1 retries.
	if strings.Join(got, " ") != "app/1 app/2 app/1 app/1" {
		t.Fatalf("calls %v", got)
	}
	if st := c.model.Bag("app/1")["state"]; st != "idle" {
		t.Fatalf("app/1 ends %s", st)
	}
}

func TestStateAndIsWaiting(t *testing.T) {
	c := newCharm("app/0", "app/1")
	c.model.SetRelated(false)
	m := c.manager(t, "app/1")
	if st, err := m.State(); err != nil || st.Status != rollingops.StatusNotReady || st.ProcessingBackend != rollingops.BackendPeer {
		t.Fatalf("no relation: %v %v", st, err)
	}
	if w, err := m.IsWaiting(""); err != nil || w {
		t.Fatalf("no relation: waiting %v %v", w, err)
	}
	c.model.SetRelated(true)
	m = c.manager(t, "app/1")
	if st, _ := m.State(); st.Status != rollingops.StatusIdle {
		t.Fatalf("%v", st)
	}
	if err := m.RequestAsyncLock(context.Background(), "restart", nil, nil); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.State(); st.Status != rollingops.StatusWaiting {
		t.Fatalf("%v", st)
	}
	if w, err := m.IsWaitingCallback("restart", ""); err != nil || !w {
		t.Fatalf("waiting for restart: %v %v", w, err)
	}
	if w, err := m.IsWaitingCallback("other", ""); err != nil || w {
		t.Fatalf("waiting for other: %v %v", w, err)
	}
	leader := c.manager(t, "app/0")
	if w, err := leader.IsWaiting("app/1"); err != nil || !w {
		t.Fatalf("leader sees app/1 waiting: %v %v", w, err)
	}
	e := libraryError(t, func() error { _, err := leader.IsWaiting("app/9"); return err }(), rollingops.ErrInvalidArgument)
	if e.Message != "unit_name provided does not belong to the peer relation." || e.Class != "ValueError" {
		t.Fatalf("%+v", e)
	}
	if err := leader.HandleEvent(context.Background(), rollingops.PeerRelationChanged); err != nil {
		t.Fatal(err)
	}
	m = c.manager(t, "app/1")
	if st, _ := m.State(); st.Status != rollingops.StatusGranted {
		t.Fatalf("%v", st)
	}
	if err := m.HandleEvent(context.Background(), rollingops.PeerRelationChanged); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.State(); st.Status != rollingops.StatusIdle || len(c.calls) != 1 {
		t.Fatalf("%v %v", st, c.calls)
	}
	desc, err := m.Describe()
	if err != nil || !json.Valid([]byte(desc)) {
		t.Fatalf("describe %q %v", desc, err)
	}
}

type backend struct {
	acquire  error
	timeouts []time.Duration
	released int
}

func (b *backend) Acquire(_ context.Context, timeout time.Duration) error {
	b.timeouts = append(b.timeouts, timeout)
	return b.acquire
}

func (b *backend) Release(context.Context) error {
	b.released++
	return nil
}

func TestSyncLock(t *testing.T) {
	c := newCharm("app/0")
	b := &backend{}
	c.sync = map[string]rollingops.SyncLockBackend{"stop-replset-member": b}
	m := c.manager(t, "app/0")
	ctx := context.Background()
	release, err := m.AcquireSyncLock(ctx, "stop-replset-member", 1500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if err := release(); err != nil || b.released != 1 {
		t.Fatalf("release: %v, %d", err, b.released)
	}
	_ = release()
	if b.released != 1 {
		t.Fatal("release twice released twice")
	}
	if _, err := m.AcquireSyncLock(ctx, "stop-replset-member", rollingops.NoTimeout); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(b.timeouts) != "[2s -1ns]" {
		t.Fatalf("timeouts %v", b.timeouts)
	}

	e := libraryError(t, second(m.AcquireSyncLock(ctx, "zzz", time.Second)), rollingops.ErrSyncLock)
	if e.Message != "Unknown sync lock backend: zzz." {
		t.Fatalf("%+v", e)
	}
	// A timeout stays a timeout, however the backend says it.
	for _, timeout := range []error{rollingops.ErrTimeout, context.DeadlineExceeded, fmt.Errorf("waited: %w", os.ErrDeadlineExceeded)} {
		b.acquire = timeout
		err := second(m.AcquireSyncLock(ctx, "stop-replset-member", time.Second))
		e := libraryError(t, err, rollingops.ErrTimeout)
		if errors.Is(err, rollingops.ErrSyncLock) || e.Class != "TimeoutError" {
			t.Fatalf("%v: %+v", timeout, e)
		}
	}
	b.acquire = errors.New("boom")
	e = libraryError(t, second(m.AcquireSyncLock(ctx, "stop-replset-member", time.Second)), rollingops.ErrSyncLock)
	if !strings.HasPrefix(e.Message, "Failed to acquire sync lock backend stop-replset-member") {
		t.Fatalf("%+v", e)
	}
}

func second[T any](_ T, err error) error { return err }

func TestConfigErrors(t *testing.T) {
	c := newCharm("app/0")
	_, err := rollingops.New(rollingops.Config{
		PeerRelation: "restart", ClusterID: "c1", BaseDir: cacheDir, Juju: c.model.Unit("app/0"),
	})
	e := libraryError(t, err, rollingops.ErrInvalidArgument)
	if e.Message != "cluster_id provided without etcd_relation_name." {
		t.Fatalf("%+v", e)
	}
	_, err = rollingops.New(rollingops.Config{
		PeerRelation: "restart", BaseDir: cacheDir, Juju: c.model.Unit("app/0"),
		Callbacks: map[string]rollingops.Callback{"x": nil},
	})
	libraryError(t, err, rollingops.ErrInvalidArgument)
}

func TestMisuseIsRefusedAndPanicsPropagate(t *testing.T) {
	c := newCharm("app/0")
	var inner error
	var m *rollingops.Manager
	c.hook = func(string, map[string]any) (rollingops.Result, error) {
		_, inner = m.State()
		return "", nil
	}
	m = c.manager(t, "app/0")
	ctx := context.Background()
	if err := m.RequestAsyncLock(ctx, "restart", nil, nil); err != nil {
		t.Fatal(err)
	}
	if d := c.model.Dispatched(); len(d) != 1 || d[0].Event != rollingops.LockGranted {
		t.Fatalf("the leader grants itself and dispatches lock-granted: %v", d)
	}
	m = c.manager(t, "app/0")
	if err := m.HandleEvent(ctx, rollingops.LockGranted); err != nil {
		t.Fatal(err)
	}
	libraryError(t, inner, rollingops.ErrBadCall)
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	libraryError(t, second(m.State()), rollingops.ErrBadCall)
	if err := m.Close(); err != nil {
		t.Fatal("Close twice:", err)
	}

	// A panic in a callback fails the hook: it comes out of the call that ran it.
	c.hook = func(string, map[string]any) (rollingops.Result, error) { panic("workload exploded") }
	m = c.manager(t, "app/0")
	if err := m.RequestAsyncLock(ctx, "restart", nil, nil); err != nil {
		t.Fatal(err)
	}
	m = c.manager(t, "app/0")
	func() {
		defer func() {
			if r := recover(); r != "workload exploded" {
				t.Fatalf("recovered %v", r)
			}
		}()
		_ = m.HandleEvent(ctx, rollingops.LockGranted)
		t.Fatal("no panic")
	}()
	// The manager is still usable afterwards.
	if _, err := m.State(); err != nil {
		t.Fatal(err)
	}

	// A cancelled context stops a call before it starts.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := m.HandleEvent(cancelled, rollingops.UpdateStatus); !errors.Is(err, context.Canceled) {
		t.Fatalf("%v", err)
	}
}

type failingJuju struct{ *rollingopstest.Unit }

func (failingJuju) RelationSet(int, bool, []rollingops.KeyValue) error {
	return errors.New("relation-set: permission denied")
}

func TestHostErrorsReachTheCaller(t *testing.T) {
	c := newCharm("app/0", "app/1")
	m, err := rollingops.New(rollingops.Config{
		PeerRelation: "restart", BaseDir: cacheDir, Callbacks: c.callbacks("app/1"),
		Juju: failingJuju{c.model.Unit("app/1")},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	e := libraryError(t, m.RequestAsyncLock(context.Background(), "restart", nil, nil), rollingops.ErrHost)
	if !strings.Contains(e.Message, "permission denied") {
		t.Fatalf("%+v", e)
	}
}

func TestHookToolsNeedAJujuEnvironment(t *testing.T) {
	if os.Getenv("JUJU_UNIT_NAME") != "" {
		t.Skip("running inside a Juju hook")
	}
	// Without Config.Juju the native library uses the hook tools, and needs to know the unit.
	_, err := rollingops.New(rollingops.Config{PeerRelation: "restart", BaseDir: cacheDir})
	e := libraryError(t, err, rollingops.ErrHost)
	if !strings.Contains(e.Message, "JUJU_UNIT_NAME") {
		t.Fatalf("%+v", e)
	}
}

func TestEventForHook(t *testing.T) {
	cfg := rollingops.Config{PeerRelation: "restart", EtcdRelation: "etcd"}
	env := func(vars map[string]string) func(string) string {
		return func(k string) string { return vars[k] }
	}
	cases := []struct {
		vars map[string]string
		want string
	}{
		{map[string]string{"JUJU_DISPATCH_PATH": "hooks/restart-relation-changed"}, "peer-relation-changed"},
		{map[string]string{"JUJU_HOOK_NAME": "restart-relation-departed", "JUJU_DEPARTING_UNIT": "app/2"}, "peer-relation-departed(app/2)"},
		{map[string]string{"JUJU_DISPATCH_PATH": "hooks/leader-elected"}, "leader-elected"},
		{map[string]string{"JUJU_DISPATCH_PATH": "hooks/rollingops_lock_granted"}, "lock-granted"},
		{map[string]string{"JUJU_DISPATCH_PATH": "hooks/etcd-relation-broken"}, "etcd-relation-broken"},
		{map[string]string{"JUJU_DISPATCH_PATH": "hooks/secret-changed", "JUJU_SECRET_LABEL": "s"}, "secret-changed(s)"},
		{map[string]string{"JUJU_DISPATCH_PATH": "actions/restart"}, ""},
		{map[string]string{"JUJU_DISPATCH_PATH": "hooks/other-relation-changed"}, ""},
	}
	for _, tc := range cases {
		ev, ok := rollingops.EventForHook(cfg, env(tc.vars))
		got := ""
		if ok {
			got = ev.String()
		}
		if got != tc.want {
			t.Errorf("%v: %q, want %q", tc.vars, got, tc.want)
		}
	}
}

func TestComponentIsCached(t *testing.T) {
	newCharm("app/0").manager(t, "app/0")
	matches, err := filepath.Glob(filepath.Join(cacheDir, "rollingops-*.cwasm"))
	if err != nil || len(matches) != 1 {
		t.Fatalf("cache files %v %v", matches, err)
	}
}
