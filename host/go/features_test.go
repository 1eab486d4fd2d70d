package rollingops_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	rollingops "github.com/rollingops/rollingops/host/go"
	"github.com/rollingops/rollingops/host/go/rollingopstest"
)

// advertise runs update-status on every unit, so that each advertises the protocol
// features it supports and the leader engages them.
func (c *charm) advertise(t *testing.T) {
	t.Helper()
	for _, u := range c.model.Units() {
		m := c.manager(t, u)
		if err := m.HandleEvent(context.Background(), rollingops.UpdateStatus); err != nil {
			t.Fatal(err)
		}
		_ = m.Close()
	}
	c.settle(t, nil)
}

func units(calls []call, id string) []string {
	var got []string
	for _, cl := range calls {
		if cl.id == id {
			got = append(got, cl.unit)
		}
	}
	return got
}

func TestHealthCheckHoldsTheLockThroughDelayedDispatches(t *testing.T) {
	c := newCharm("app/0", "app/1")
	type check struct {
		unit string
		at   time.Time
	}
	var checks []check
	healthyAt := rollingopstest.Epoch.Add(time.Hour) // set once app/1 has restarted
	c.checks = map[string]rollingops.HealthCheck{
		"healthy": func(ctx context.Context, kwargs map[string]any) (bool, error) {
			now := c.model.Now()
			checks = append(checks, check{"app/1", now})
			if kwargs["delay"] != 1.0 {
				t.Errorf("the check gets the operation's kwargs: %v", kwargs)
			}
			if len(checks) == 2 {
				return false, errors.New("not reachable yet") // an error is "not yet"
			}
			return !now.Before(healthyAt), nil
		},
	}
	c.hook = func(unit string, _ map[string]any) (rollingops.Result, error) {
		if unit == "app/1" {
			healthyAt = c.model.Now().Add(7 * time.Second)
		}
		return rollingops.Release, nil
	}
	c.advertise(t)
	ctx := context.Background()
	m := c.manager(t, "app/1")
	opts := rollingops.RequestOptions{HealthCheck: "healthy", HealthTimeout: time.Minute, GenerationKwarg: "gen"}
	if err := m.RequestLock(ctx, "restart", map[string]any{"delay": 1}, opts); err != nil {
		t.Fatal(err)
	}
	_ = m.Close()
	c.model.Advance(time.Second)
	if err := c.manager(t, "app/0").RequestAsyncLock(ctx, "restart", nil, nil); err != nil {
		t.Fatal(err)
	}
	start := c.model.Now()
	c.settle(t, nil)

	if got := strings.Join(units(c.calls, "restart"), " "); got != "app/1 app/0" {
		t.Fatalf("restarts %v", got)
	}
	if !strings.Contains(c.calls[0].kwargsJSON, `"gen":`) {
		t.Errorf("the generation kwarg is passed: %s", c.calls[0].kwargsJSON)
	}
	// Checked 2 s after the operation, then backing off (2 s, 4 s, 8 s apart: false, an
	// error, true); app/0 went only after the last one.
	if len(checks) != 3 {
		t.Fatalf("checks at %v", checks)
	}
	last := checks[len(checks)-1].at
	if last.Before(healthyAt) || last.Sub(start) > 30*time.Second {
		t.Errorf("passed at %v (healthy from %v, started %v)", last, healthyAt, start)
	}
	var delays []time.Duration
	for _, h := range c.model.Dispatched() {
		if h.After > 0 {
			if h.Unit != "app/1" || h.Event != rollingops.LockGranted {
				t.Errorf("delayed dispatch %+v", h)
			}
			delays = append(delays, h.After)
		}
	}
	if len(delays) != 3 || delays[0] != 2*time.Second || delays[1] <= delays[0] {
		t.Errorf("delayed dispatches %v", delays)
	}
	if len(c.model.Delayed()) != 0 {
		t.Errorf("left over %v", c.model.Delayed())
	}
	for _, u := range c.model.Units() {
		if st := c.model.Bag(u)["state"]; st != "idle" {
			t.Errorf("%s ends %q", u, st)
		}
	}
}

// noDelays is a Juju that cannot dispatch after a delay.
type noDelays struct{ rollingops.Juju }

func TestWithoutDelayedDispatchTheHookGoesOn(t *testing.T) {
	c := newCharm("app/0")
	c.juju = func(u *rollingopstest.Unit) rollingops.Juju { return noDelays{u} }
	c.checks = map[string]rollingops.HealthCheck{
		"healthy": func(context.Context, map[string]any) (bool, error) { return true, nil },
	}
	ctx := context.Background()
	if err := c.manager(t, "app/0").RequestLock(ctx, "restart", nil, rollingops.RequestOptions{HealthCheck: "healthy"}); err != nil {
		t.Fatal(err)
	}
	c.settle(t, nil)
	found := false
	for _, l := range c.model.Logs() {
		found = found || strings.Contains(l.Message, "this host cannot dispatch a hook after a delay")
	}
	if !found || len(c.calls) != 1 {
		t.Fatalf("calls %v, logs %v", c.calls, c.model.Logs())
	}
	// The gate still holds the lock until a later hook finds the check due and passing.
	if g := c.model.Bag(rollingops.AppBag)["granted_unit"]; g != "app/0" {
		t.Fatalf("granted to %q", g)
	}
	c.model.Advance(3 * time.Second)
	if err := c.manager(t, "app/0").HandleEvent(ctx, rollingops.UpdateStatus); err != nil {
		t.Fatal(err)
	}
	c.settle(t, nil)
	if g := c.model.Bag(rollingops.AppBag)["granted_unit"]; g != "" {
		t.Fatalf("still granted to %q", g)
	}
}

func TestRequestLockErrors(t *testing.T) {
	c := newCharm("app/0", "app/1")
	c.checks = map[string]rollingops.HealthCheck{
		"healthy": func(context.Context, map[string]any) (bool, error) { return true, nil },
	}
	m := c.manager(t, "app/1")
	ctx := context.Background()
	cases := []struct {
		opts    rollingops.RequestOptions
		kwargs  map[string]any
		message string
	}{
		{rollingops.RequestOptions{HealthCheck: "nope"}, nil, "Unknown health_check callback: nope"},
		{rollingops.RequestOptions{HealthTimeout: -time.Second}, nil, "HealthTimeout must not be negative"},
		{rollingops.RequestOptions{GenerationKwarg: " "}, nil, "generation_kwarg must not be blank"},
		{rollingops.RequestOptions{MaxRetry: rollingops.MaxRetry(-1)}, nil, "Failed to create the lock request"},
		{rollingops.RequestOptions{}, map[string]any{"x": math.Inf(1)}, "Failed to create the lock request: json: unsupported value: +Inf"},
	}
	for _, tc := range cases {
		e := libraryError(t, m.RequestLock(ctx, "restart", tc.kwargs, tc.opts), rollingops.ErrInvalidLockRequest)
		if !strings.HasPrefix(e.Message, tc.message) || e.Class != "RollingOpsInvalidLockRequestError" {
			t.Errorf("%+v: %q (%s)", tc.opts, e.Message, e.Class)
		}
	}
	if len(c.model.Writes()) != 0 {
		t.Fatalf("bad requests wrote %v", c.model.Writes())
	}
	if err := m.RequestLock(ctx, "restart", nil, rollingops.RequestOptions{MaxRetry: rollingops.MaxRetry(2)}); err != nil {
		t.Fatal(err)
	}
	if got := c.model.Bag("app/1")["operations"]; !strings.Contains(got, `"max_retry":2`) {
		t.Fatalf("operations %s", got)
	}
	// The id namespaces of callbacks and health checks are one.
	_, err := rollingops.New(rollingops.Config{
		PeerRelation: "restart", BaseDir: cacheDir, Juju: c.model.Unit("app/0"),
		Callbacks:    map[string]rollingops.Callback{"x": func(context.Context, map[string]any) (rollingops.Result, error) { return "", nil }},
		HealthChecks: map[string]rollingops.HealthCheck{"x": func(context.Context, map[string]any) (bool, error) { return true, nil }},
	})
	libraryError(t, err, rollingops.ErrInvalidArgument)
	_, err = rollingops.New(rollingops.Config{
		PeerRelation: "restart", BaseDir: cacheDir, Juju: c.model.Unit("app/0"),
		HealthChecks: map[string]rollingops.HealthCheck{"x": nil},
	})
	libraryError(t, err, rollingops.ErrInvalidArgument)
}

func TestPolicyControlsAndRank(t *testing.T) {
	c := newCharm("app/0", "app/1", "app/2")
	c.advertise(t)
	ctx := context.Background()
	follower := c.manager(t, "app/1")
	e := libraryError(t, follower.SetPolicy(ctx, rollingops.Policy{}), rollingops.ErrInvalidArgument)
	if !strings.HasPrefix(e.Message, "Only the leader can") || e.Class != "ValueError" {
		t.Fatalf("%+v", e)
	}
	libraryError(t, second(follower.Pause(ctx, "x")), rollingops.ErrInvalidArgument)
	libraryError(t, second(follower.ForceRelease(ctx, "")), rollingops.ErrInvalidArgument)

	leader := c.manager(t, "app/0")
	for _, bad := range []rollingops.Policy{{MaxConcurrent: -1}, {GrantTimeout: -time.Second}} {
		libraryError(t, leader.SetPolicy(ctx, bad), rollingops.ErrInvalidArgument)
	}
	if err := leader.SetPolicy(ctx, rollingops.Policy{RankOrdering: true, GrantTimeout: 90 * time.Second}); err != nil {
		t.Fatal(err)
	}
	policy := c.model.Bag(rollingops.AppBag)["rollingops-policy"]
	for _, want := range []string{`"max_concurrent":1`, `90`, `"halt_on_health_failure":true`} {
		if !strings.Contains(policy, want) {
			t.Errorf("policy %s lacks %s", policy, want)
		}
	}
	if changed, err := leader.Pause(ctx, "maintenance window"); err != nil || !changed {
		t.Fatalf("pause: %v %v", changed, err)
	}
	if changed, err := leader.Pause(ctx, "again"); err != nil || changed {
		t.Fatalf("pause again: %v %v", changed, err)
	}
	if !strings.Contains(c.model.Bag(rollingops.AppBag)["rollingops-paused"], "maintenance window") {
		t.Fatalf("app bag %v", c.model.Bag(rollingops.AppBag))
	}
	if n, err := leader.ForceRelease(ctx, ""); err != nil || n != 0 {
		t.Fatalf("force-release of nothing: %d %v", n, err)
	}
	libraryError(t, second(leader.ForceRelease(ctx, "app/2")), rollingops.ErrInvalidArgument)
	_ = leader.Close()

	// While paused, requests queue; ranks decide the order once resumed.
	for unit, rank := range map[string]int{"app/0": 5, "app/1": 9, "app/2": -1} {
		m := c.manager(t, unit)
		if err := m.SetRank(ctx, rank); err != nil {
			t.Fatal(err)
		}
		if err := m.RequestAsyncLock(ctx, "restart", map[string]any{"unit": unit}, nil); err != nil {
			t.Fatal(err)
		}
		if unit == "app/1" {
			if err := m.RequestAsyncLock(ctx, "other", nil, nil); err != nil {
				t.Fatal(err)
			}
			if n, err := m.Cancel(ctx, "other"); err != nil || n != 1 {
				t.Fatalf("cancel: %d %v", n, err)
			}
		}
		_ = m.Close()
	}
	c.settle(t, nil)
	if len(c.calls) != 0 {
		t.Fatalf("ran while paused: %v", c.calls)
	}
	leader = c.manager(t, "app/0")
	if changed, err := leader.Resume(ctx); err != nil || !changed {
		t.Fatalf("resume: %v %v", changed, err)
	}
	if changed, err := leader.Resume(ctx); err != nil || changed {
		t.Fatalf("resume again: %v %v", changed, err)
	}
	_ = leader.Close()
	c.settle(t, nil)
	if got := strings.Join(units(c.calls, "restart"), " "); got != "app/2 app/0 app/1" {
		t.Fatalf("order %s, want by rank", got)
	}
	if len(units(c.calls, "other")) != 0 {
		t.Fatal("a cancelled operation ran")
	}
}

func TestApplicationWideRoll(t *testing.T) {
	c := newCharm("app/0", "app/1", "app/2")
	var checked []string
	c.checks = map[string]rollingops.HealthCheck{
		"healthy": func(context.Context, map[string]any) (bool, error) {
			checked = append(checked, "x")
			return true, nil
		},
	}
	c.advertise(t)
	ctx := context.Background()
	libraryError(t, second(c.manager(t, "app/1").StartRoll(ctx, rollingops.Roll{CallbackID: "restart"})), rollingops.ErrInvalidArgument)
	leader := c.manager(t, "app/0")
	libraryError(t, second(leader.StartRoll(ctx, rollingops.Roll{CallbackID: "nope"})), rollingops.ErrInvalidLockRequest)
	libraryError(t, second(leader.StartRoll(ctx, rollingops.Roll{CallbackID: "restart", Kwargs: map[string]any{"x": math.NaN()}})), rollingops.ErrInvalidLockRequest)
	libraryError(t, second(leader.StartRoll(ctx, rollingops.Roll{CallbackID: "restart", HealthTimeout: -1})), rollingops.ErrInvalidLockRequest)
	gen, err := leader.StartRoll(ctx, rollingops.Roll{
		CallbackID: "restart", Kwargs: map[string]any{"delay": 0}, HealthCheck: "healthy",
		HealthTimeout: 30 * time.Second, OnComplete: "done",
	})
	if err != nil || gen != 1 {
		t.Fatalf("start-roll: %d %v", gen, err)
	}
	libraryError(t, second(leader.StartRoll(ctx, rollingops.Roll{CallbackID: "restart"})), rollingops.ErrInvalidArgument)
	_ = leader.Close()
	c.settle(t, nil)
	ran := map[string]int{}
	for _, u := range units(c.calls, "restart") {
		ran[u]++
	}
	if len(ran) != 3 || ran["app/0"] != 1 || ran["app/1"] != 1 || ran["app/2"] != 1 {
		t.Fatalf("restarts %v", c.calls)
	}
	if len(checked) < 3 {
		t.Errorf("health checks %d", len(checked))
	}
	done := units(c.calls, "done")
	if len(done) != 1 || done[0] != "app/0" {
		t.Fatalf("on-complete %v", c.calls)
	}
	for _, cl := range c.calls {
		if cl.id == "done" && cl.kwargsJSON != `{"generation":1}` {
			t.Errorf("on-complete kwargs %s", cl.kwargsJSON)
		}
	}
	gen, err = c.manager(t, "app/0").StartRoll(ctx, rollingops.Roll{CallbackID: "restart"})
	if err != nil || gen != 2 {
		t.Fatalf("the next roll: %d %v", gen, err)
	}
}
