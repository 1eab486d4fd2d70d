// Package rollingopstest is an in-memory Juju for testing charms that use rollingops: one
// application's peer relation, its units' databags, leadership, a clock, and the hooks Juju
// would run next.
//
// Writes apply at once. Each write that changes a bag queues `relation-changed` on every
// other unit, and each dispatch queues the dispatched hook on its unit; Next pops them in
// order (a hook already queued for a unit is not queued twice), so a test can drive an
// application until it settles. A delayed dispatch (DispatchAfter) waits on the model clock:
// it is queued once the clock reaches its time, and when nothing else is queued Next moves
// the clock forward to the earliest one (time passes while the application is idle):
//
//	model := rollingopstest.NewModel("restart", "app/0", "app/1", "app/2")
//	for {
//		unit, ev, ok := model.Next()
//		if !ok {
//			break
//		}
//		m, _ := rollingops.New(rollingops.Config{PeerRelation: "restart", Juju: model.Unit(unit), ...})
//		_ = m.HandleEvent(ctx, ev)
//		m.Close()
//	}
package rollingopstest

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	rollingops "github.com/rollingops/rollingops/host/go"
)

// Epoch is the model clock's start: 2026-05-01T12:00:00Z.
var Epoch = time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)

// Model is one application and its peer relation, in memory. It is safe for concurrent
// use.
type Model struct {
	mu         sync.Mutex
	endpoint   string
	relationID int
	related    bool
	leader     string
	now        time.Time
	units      []string
	app        map[string]string
	bags       map[string]map[string]string
	pending    []Hook
	delayed    []delayedHook
	writes     []Write
	dispatched []Hook
	logs       []LogLine
}

// Hook is a hook Juju will run on a unit.
type Hook struct {
	Unit  string
	Event rollingops.Event
	// After is the delay a DispatchAfter asked for (zero for Dispatch and Juju's hooks).
	After time.Duration
}

type delayedHook struct {
	hook Hook
	due  time.Time
}

// Write is one relation-set.
type Write struct {
	Unit  string
	App   bool
	Pairs []rollingops.KeyValue
}

// LogLine is one juju-log.
type LogLine struct {
	Unit    string
	Level   rollingops.LogLevel
	Message string
}

// NewModel is an application whose units share the peer relation `endpoint` (id 1), with
// empty bags; the first unit leads and the clock reads Epoch.
func NewModel(endpoint string, units ...string) *Model {
	m := &Model{
		endpoint:   endpoint,
		relationID: 1,
		related:    true,
		now:        Epoch,
		units:      slices.Clone(units),
		app:        map[string]string{},
		bags:       map[string]map[string]string{},
	}
	if len(units) > 0 {
		m.leader = units[0]
	}
	for _, u := range units {
		m.bags[u] = map[string]string{}
	}
	return m
}

// Unit is the Juju of one unit of the model.
func (m *Model) Unit(name string) *Unit {
	return &Unit{model: m, name: name}
}

// SetRelated makes the peer relation exist or not.
func (m *Model) SetRelated(related bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.related = related
}

// Elect makes unit the leader and queues leader-elected on it.
func (m *Model) Elect(unit string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.leader = unit
	m.queue(unit, rollingops.LeaderElected)
}

// Leader is the current leader.
func (m *Model) Leader() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.leader
}

// Depart removes unit (and its bag) from the relation and queues relation-departed on the
// leader.
func (m *Model) Depart(unit string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.units = slices.DeleteFunc(m.units, func(u string) bool { return u == unit })
	delete(m.bags, unit)
	m.pending = slices.DeleteFunc(m.pending, func(h Hook) bool { return h.Unit == unit })
	m.queue(m.leader, rollingops.PeerRelationDeparted(unit))
}

// Advance moves the clock forward.
func (m *Model) Advance(d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.now = m.now.Add(d)
}

// Now reads the clock.
func (m *Model) Now() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.now
}

// Seed sets keys in a unit's bag (or the app bag for rollingops.AppBag) without queueing
// hooks, as if written earlier.
func (m *Model) Seed(unit string, values map[string]string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	bag := m.app
	if unit != rollingops.AppBag {
		bag = m.bags[unit]
	}
	for k, v := range values {
		if v == "" {
			delete(bag, k)
		} else {
			bag[k] = v
		}
	}
}

// Bag is a copy of a unit's bag, or of the app bag for rollingops.AppBag.
func (m *Model) Bag(unit string) map[string]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if unit == rollingops.AppBag {
		return maps.Clone(m.app)
	}
	return maps.Clone(m.bags[unit])
}

// Units lists the units on the relation.
func (m *Model) Units() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.units)
}

// Queue schedules a hook on a unit (unless it is already queued).
func (m *Model) Queue(unit string, ev rollingops.Event) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.queue(unit, ev)
}

func (m *Model) queue(unit string, ev rollingops.Event) {
	h := Hook{Unit: unit, Event: ev}
	if !slices.Contains(m.pending, h) {
		m.pending = append(m.pending, h)
	}
}

// Delayed lists the delayed dispatches that are not due yet, earliest first.
func (m *Model) Delayed() []Hook {
	m.mu.Lock()
	defer m.mu.Unlock()
	hooks := make([]Hook, len(m.delayed))
	for i, d := range m.delayed {
		hooks[i] = d.hook
	}
	return hooks
}

// promote queues the delayed hooks that are due; with nothing queued, it first moves the
// clock to the earliest one.
func (m *Model) promote() {
	if len(m.pending) == 0 && len(m.delayed) > 0 && m.now.Before(m.delayed[0].due) {
		m.now = m.delayed[0].due
	}
	for len(m.delayed) > 0 && !m.now.Before(m.delayed[0].due) {
		d := m.delayed[0]
		m.delayed = m.delayed[1:]
		m.queue(d.hook.Unit, d.hook.Event)
	}
}

// Next pops the next hook Juju would run.
func (m *Model) Next() (unit string, ev rollingops.Event, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.promote()
	if len(m.pending) == 0 {
		return "", rollingops.Event{}, false
	}
	h := m.pending[0]
	m.pending = m.pending[1:]
	return h.Unit, h.Event, true
}

// NextRandom pops a hook chosen by r among those queued: a seeded interleaving, since
// Juju orders hooks on different units freely (hooks of one unit keep their order).
func (m *Model) NextRandom(r *rand.Rand) (unit string, ev rollingops.Event, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.promote()
	if len(m.pending) == 0 {
		return "", rollingops.Event{}, false
	}
	// The first queued hook of a randomly chosen unit.
	var heads []int
	seen := map[string]bool{}
	for i, h := range m.pending {
		if !seen[h.Unit] {
			seen[h.Unit] = true
			heads = append(heads, i)
		}
	}
	i := heads[r.IntN(len(heads))]
	h := m.pending[i]
	m.pending = slices.Delete(m.pending, i, i+1)
	return h.Unit, h.Event, true
}

// Writes lists every relation-set so far.
func (m *Model) Writes() []Write {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.writes)
}

// Dispatched lists every dispatch so far (delayed ones with their After).
func (m *Model) Dispatched() []Hook {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.dispatched)
}

// Logs lists every log line so far.
func (m *Model) Logs() []LogLine {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.logs)
}

// Unit is one unit's rollingops.Juju over a Model.
type Unit struct {
	model *Model
	name  string
}

var (
	_ rollingops.Juju              = (*Unit)(nil)
	_ rollingops.DelayedDispatcher = (*Unit)(nil)
)

// UnitName is the unit's name.
func (u *Unit) UnitName() string { return u.name }

// ModelUUID is a fixed UUID.
func (u *Unit) ModelUUID() string { return "00000000-0000-4000-8000-000000000000" }

// IsLeader reports whether the unit leads.
func (u *Unit) IsLeader() (bool, error) {
	u.model.mu.Lock()
	defer u.model.mu.Unlock()
	return u.model.leader == u.name, nil
}

// RelationIDs is [1] for the peer endpoint while the relation exists.
func (u *Unit) RelationIDs(endpoint string) ([]int, error) {
	u.model.mu.Lock()
	defer u.model.mu.Unlock()
	if endpoint == u.model.endpoint && u.model.related {
		return []int{u.model.relationID}, nil
	}
	return []int{}, nil
}

// RelationUnits lists the other units.
func (u *Unit) RelationUnits(relationID int) ([]string, error) {
	u.model.mu.Lock()
	defer u.model.mu.Unlock()
	if err := u.model.check(relationID); err != nil {
		return nil, err
	}
	return slices.DeleteFunc(slices.Clone(u.model.units), func(o string) bool { return o == u.name }), nil
}

// RelationGet reads a bag.
func (u *Unit) RelationGet(relationID int, unit string) (map[string]string, error) {
	u.model.mu.Lock()
	defer u.model.mu.Unlock()
	if err := u.model.check(relationID); err != nil {
		return nil, err
	}
	if unit == rollingops.AppBag {
		return maps.Clone(u.model.app), nil
	}
	return maps.Clone(u.model.bags[unit]), nil
}

// RelationSet writes to the unit's bag, or (leader only) the app bag, and queues
// relation-changed on the other units when something changed.
func (u *Unit) RelationSet(relationID int, app bool, pairs []rollingops.KeyValue) error {
	m := u.model
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.check(relationID); err != nil {
		return err
	}
	bag := m.bags[u.name]
	if app {
		if m.leader != u.name {
			return fmt.Errorf("relation-set: %s is not the leader and cannot write the app bag", u.name)
		}
		bag = m.app
	}
	if bag == nil {
		return fmt.Errorf("relation-set: %s is not on the relation", u.name)
	}
	m.writes = append(m.writes, Write{Unit: u.name, App: app, Pairs: slices.Clone(pairs)})
	changed := false
	for _, p := range pairs {
		old, had := bag[p.Key]
		switch {
		case p.Value == "" && had:
			delete(bag, p.Key)
			changed = true
		case p.Value != "" && old != p.Value:
			bag[p.Key] = p.Value
			changed = true
		}
	}
	if changed {
		for _, other := range m.units {
			if other != u.name {
				m.queue(other, rollingops.PeerRelationChanged)
			}
		}
	}
	return nil
}

func (m *Model) check(relationID int) error {
	if !m.related || relationID != m.relationID {
		return fmt.Errorf("relation %d not found", relationID)
	}
	return nil
}

// Log records a log line.
func (u *Unit) Log(level rollingops.LogLevel, message string) {
	u.model.mu.Lock()
	defer u.model.mu.Unlock()
	u.model.logs = append(u.model.logs, LogLine{Unit: u.name, Level: level, Message: message})
}

// Dispatch queues the hook on this unit (rollingops_lock_granted becomes
// rollingops.LockGranted).
func (u *Unit) Dispatch(event string) error {
	ev, err := hookEvent("dispatch", event)
	if err != nil {
		return err
	}
	u.model.mu.Lock()
	defer u.model.mu.Unlock()
	u.model.dispatched = append(u.model.dispatched, Hook{Unit: u.name, Event: ev})
	u.model.queue(u.name, ev)
	return nil
}

// DispatchAfter queues the hook on this unit once the model clock has moved delay forward
// (see Next).
func (u *Unit) DispatchAfter(event string, delay time.Duration) error {
	ev, err := hookEvent("dispatch-after", event)
	if err != nil {
		return err
	}
	m := u.model
	m.mu.Lock()
	defer m.mu.Unlock()
	h := Hook{Unit: u.name, Event: ev, After: delay}
	m.dispatched = append(m.dispatched, h)
	d := delayedHook{hook: Hook{Unit: u.name, Event: ev}, due: m.now.Add(delay)}
	i := len(m.delayed) // after every hook due at the same time or earlier
	for i > 0 && m.delayed[i-1].due.After(d.due) {
		i--
	}
	m.delayed = slices.Insert(m.delayed, i, d)
	return nil
}

func hookEvent(tool, event string) (rollingops.Event, error) {
	ev, ok := rollingops.EventForHook(rollingops.Config{}, func(key string) string {
		if key == "JUJU_DISPATCH_PATH" {
			return "hooks/" + event
		}
		return ""
	})
	if !ok {
		return rollingops.Event{}, fmt.Errorf("%s: unknown hook %q", tool, event)
	}
	return ev, nil
}

// Now reads the model clock.
func (u *Unit) Now() time.Time { return u.model.Now() }
