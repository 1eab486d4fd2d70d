package rollingops

// Replays the conformance vectors (tests/vectors/*.json, format in tests/vectors/README.md)
// through the Go host: the same component must produce exactly the recorded results,
// effects and final databags. Values are compared as canonical JSON, so every string (a
// databag value, kwargs, a message) must match byte for byte.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type vector struct {
	Name         string                       `json:"name"`
	Config       json.RawMessage              `json:"config"`
	RelationID   *int                         `json:"relation_id"`
	Units        []string                     `json:"units"`
	Callbacks    map[string][]json.RawMessage `json:"callbacks"`
	SyncBackends map[string]struct {
		Acquire []json.RawMessage `json:"acquire"`
		Release []json.RawMessage `json:"release"`
	} `json:"sync_backends"`
	Initial bags         `json:"initial"`
	Hooks   []vectorHook `json:"hooks"`
	Final   bags         `json:"final"`
}

type bags struct {
	App   map[string]string            `json:"app"`
	Units map[string]map[string]string `json:"units"`
}

type vectorHook struct {
	Unit      string       `json:"unit"`
	Leader    bool         `json:"leader"`
	NowMicros int64        `json:"now_micros"`
	Depart    string       `json:"depart"`
	Created   any          `json:"created"`
	Calls     []vectorCall `json:"calls"`
}

type vectorCall struct {
	Call    map[string]json.RawMessage `json:"call"`
	Result  any                        `json:"result"`
	Effects []any                      `json:"effects"`
}

// world is the replay host: the relation, the scripts, and the effects of the running call.
type world struct {
	endpoint   string
	relationID *int
	units      []string
	app        map[string]string
	bags       map[string]map[string]string
	unit       string
	leader     bool
	now        int64
	effects    []any
	uses       map[string]int
}

func (w *world) UnitName() string        { return w.unit }
func (w *world) ModelUUID() string       { return "00000000-0000-4000-8000-000000000000" }
func (w *world) IsLeader() (bool, error) { return w.leader, nil }
func (w *world) Now() time.Time          { return time.UnixMicro(w.now) }
func (w *world) Sleep(time.Duration)     {}

func (w *world) RelationIDs(endpoint string) ([]int, error) {
	if w.relationID != nil && endpoint == w.endpoint {
		return []int{*w.relationID}, nil
	}
	return []int{}, nil
}

func (w *world) RelationUnits(int) ([]string, error) {
	var others []string
	for _, u := range w.units {
		if u != w.unit {
			others = append(others, u)
		}
	}
	return others, nil
}

func (w *world) RelationGet(_ int, unit string) (map[string]string, error) {
	if unit == AppBag {
		return w.app, nil
	}
	return w.bags[unit], nil
}

func (w *world) RelationSet(relationID int, app bool, pairs []KeyValue) error {
	wire := make([]any, len(pairs))
	for i, p := range pairs {
		wire[i] = []any{p.Key, p.Value}
	}
	w.effects = append(w.effects, map[string]any{"relation-set": map[string]any{
		"relation_id": relationID, "app": app, "pairs": wire,
	}})
	bag := w.app
	if !app {
		if w.bags[w.unit] == nil {
			w.bags[w.unit] = map[string]string{}
		}
		bag = w.bags[w.unit]
	}
	for _, p := range pairs {
		if p.Value == "" {
			delete(bag, p.Key)
		} else {
			bag[p.Key] = p.Value
		}
	}
	return nil
}

func (w *world) Log(level LogLevel, message string) {
	w.effects = append(w.effects, map[string]any{"log": map[string]any{
		"level": strings.ToLower(level.String()), "message": message,
	}})
}

func (w *world) Dispatch(event string) error {
	w.effects = append(w.effects, map[string]any{"dispatch": event})
	return nil
}

// next is a script's next reply (the last one repeats); no script replies "missing".
func (w *world) next(key string, script []json.RawMessage) any {
	if len(script) == 0 {
		return "missing"
	}
	i := min(w.uses[key], len(script)-1)
	w.uses[key]++
	var reply any
	if err := json.Unmarshal(script[i], &reply); err != nil {
		panic(err)
	}
	return reply
}

func (w *world) callback(id string, script []json.RawMessage) Callback {
	return func(ctx context.Context, _ map[string]any) (Result, error) {
		raw, _ := KwargsJSON(ctx)
		w.effects = append(w.effects, map[string]any{"run-callback": map[string]any{"id": id, "kwargs_json": raw}})
		switch reply := w.next("callback:"+id, script).(type) {
		case map[string]any:
			if text, ok := reply["raised"].(string); ok {
				return "", errors.New(text)
			}
			if text, ok := reply["returned"].(string); ok {
				return Result(text), nil
			}
			return "", nil
		default:
			return "", errMissing
		}
	}
}

type vectorBackend struct {
	w                *world
	id               string
	acquire, release []json.RawMessage
}

func (b *vectorBackend) Acquire(_ context.Context, timeout time.Duration) error {
	var seconds any
	if timeout != NoTimeout {
		seconds = int64(timeout / time.Second)
	}
	b.w.effects = append(b.w.effects, map[string]any{"sync-backend-acquire": map[string]any{
		"id": b.id, "timeout_seconds": seconds,
	}})
	return syncReply(b.w.next("acquire:"+b.id, b.acquire))
}

func (b *vectorBackend) Release(context.Context) error {
	b.w.effects = append(b.w.effects, map[string]any{"sync-backend-release": map[string]any{"id": b.id}})
	return syncReply(b.w.next("release:"+b.id, b.release))
}

func syncReply(reply any) error {
	switch r := reply.(type) {
	case string:
		switch r {
		case "ok":
			return nil
		case "timed-out":
			return ErrTimeout
		}
	case map[string]any:
		if text, ok := r["failed"].(string); ok {
			return errors.New(text)
		}
	}
	return errMissing
}

// outcome is a call's result in the vector form.
func outcome(value any, err error) any {
	if err == nil {
		return map[string]any{"ok": value}
	}
	var e *Error
	if !errors.As(err, &e) || witCase(e) == "" || kinds[codeTrap].err == e.Kind ||
		kinds[codeBadCall].err == e.Kind || kinds[codePanic].err == e.Kind || kinds[codeLoad].err == e.Kind {
		panic(fmt.Sprintf("not a library error: %v", err))
	}
	return map[string]any{"error": map[string]any{"case": witCase(e), "message": e.Message}}
}

func replayCall(s *session, call map[string]json.RawMessage) any {
	if len(call) != 1 {
		panic(fmt.Sprintf("a call is a one-key object: %v", call))
	}
	ctx := context.Background()
	for name, raw := range call {
		switch name {
		case "request-async-lock":
			var a struct {
				CallbackID string `json:"callback_id"`
				KwargsJSON string `json:"kwargs_json"`
				MaxRetry   *int64 `json:"max_retry"`
			}
			must(json.Unmarshal(raw, &a))
			return outcome(nil, s.requestAsyncLock(ctx, a.CallbackID, a.KwargsJSON, a.MaxRetry))
		case "handle-event":
			var ev Event
			var simple string
			if json.Unmarshal(raw, &simple) == nil {
				ev = Event{name: simple}
			} else {
				var payload map[string]string
				must(json.Unmarshal(raw, &payload))
				for k, v := range payload {
					ev = Event{name: k, payload: v}
				}
			}
			return outcome(nil, s.handleEvent(ctx, ev))
		case "state":
			st, err := s.state()
			return outcome(map[string]any{"status": string(st.Status), "processing_backend": string(st.ProcessingBackend)}, err)
		case "is-waiting":
			var a struct {
				UnitName   *string `json:"unit_name"`
				CallbackID *string `json:"callback_id"`
			}
			must(json.Unmarshal(raw, &a))
			waiting, err := s.isWaiting(deref(a.UnitName), deref(a.CallbackID))
			return outcome(waiting, err)
		case "acquire-sync-lock":
			var a struct {
				BackendID      string  `json:"backend_id"`
				TimeoutSeconds *uint32 `json:"timeout_seconds"`
			}
			must(json.Unmarshal(raw, &a))
			return outcome(nil, s.acquireSyncLock(ctx, a.BackendID, a.TimeoutSeconds))
		case "release-sync-lock":
			var a struct {
				BackendID string `json:"backend_id"`
			}
			must(json.Unmarshal(raw, &a))
			return outcome(nil, s.releaseSyncLock(ctx, a.BackendID))
		}
		panic("unknown call " + name)
	}
	return nil
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

// canonical is v as JSON with sorted keys, exact numbers and no HTML escaping.
func canonical(v any) string {
	raw, err := json.Marshal(v)
	must(err)
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var tree any
	must(dec.Decode(&tree))
	var out bytes.Buffer
	enc := json.NewEncoder(&out)
	enc.SetEscapeHTML(false)
	must(enc.Encode(tree))
	return out.String()
}

func replay(t *testing.T, path string) {
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v vector
	if err := dec.Decode(&v); err != nil {
		t.Fatal(err)
	}
	var config struct {
		PeerRelationName string   `json:"peer_relation_name"`
		CallbackIDs      []string `json:"callback_ids"`
		SyncLockIDs      []string `json:"sync_lock_ids"`
	}
	must(json.Unmarshal(v.Config, &config))
	w := &world{
		endpoint:   config.PeerRelationName,
		relationID: v.RelationID,
		units:      v.Units,
		app:        map[string]string{},
		bags:       map[string]map[string]string{},
		uses:       map[string]int{},
	}
	for k, val := range v.Initial.App {
		w.app[k] = val
	}
	for _, u := range v.Units {
		w.bags[u] = map[string]string{}
		for k, val := range v.Initial.Units[u] {
			w.bags[u][k] = val
		}
	}
	// Everything the component may call is registered, so every call is recorded.
	callbacks := map[string]Callback{}
	for _, id := range config.CallbackIDs {
		callbacks[id] = w.callback(id, v.Callbacks[id])
	}
	for id, script := range v.Callbacks {
		callbacks[id] = w.callback(id, script)
	}
	syncLocks := map[string]SyncLockBackend{}
	for _, id := range config.SyncLockIDs {
		s := v.SyncBackends[id]
		syncLocks[id] = &vectorBackend{w: w, id: id, acquire: s.Acquire, release: s.Release}
	}
	for id, s := range v.SyncBackends {
		syncLocks[id] = &vectorBackend{w: w, id: id, acquire: s.Acquire, release: s.Release}
	}

	check := func(where string, want, got any) {
		t.Helper()
		if w, g := canonical(want), canonical(got); w != g {
			t.Errorf("%s\n  recorded: %s  replayed: %s", where, w, g)
		}
	}
	for i, hook := range v.Hooks {
		w.unit, w.leader, w.now, w.effects = hook.Unit, hook.Leader, hook.NowMicros, nil
		if hook.Depart != "" {
			kept := w.units[:0:0]
			for _, u := range w.units {
				if u != hook.Depart {
					kept = append(kept, u)
				}
			}
			w.units = kept
			delete(w.bags, hook.Depart)
		}
		s, err := newSession("", string(v.Config), w, callbacks, nil, syncLocks)
		check(fmt.Sprintf("hook %d (%s) created", i, hook.Unit), hook.Created, outcome(nil, err))
		if len(w.effects) != 0 {
			t.Fatalf("hook %d: creating a manager had effects %v", i, w.effects)
		}
		if err != nil {
			continue
		}
		for j, c := range hook.Calls {
			w.effects = []any{}
			result := replayCall(s, c.Call)
			where := fmt.Sprintf("hook %d (%s) call %d %s", i, hook.Unit, j, canonical(c.Call))
			check(where+" result", c.Result, result)
			check(where+" effects", c.Effects, w.effects)
		}
		must(s.close())
	}
	finalUnits := map[string]map[string]string{}
	for _, u := range w.units {
		finalUnits[u] = w.bags[u]
	}
	check("final app bag", v.Final.App, w.app)
	check("final unit bags", v.Final.Units, finalUnits)
}

func TestConformanceVectors(t *testing.T) {
	paths, err := filepath.Glob(filepath.Join("..", "..", "tests", "vectors", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) < 30 {
		t.Fatalf("found %d vectors in tests/vectors", len(paths))
	}
	for _, path := range paths {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".json"), func(t *testing.T) {
			replay(t, path)
		})
	}
}
