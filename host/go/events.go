package rollingops

import (
	"encoding/json"
	"path"
)

// Event is a hook (or custom event) the library reacts to; pass it to Manager.HandleEvent.
type Event struct {
	name    string
	payload string
}

// The events without a payload.
var (
	// PeerRelationChanged is `<peer>-relation-changed`.
	PeerRelationChanged = Event{name: "peer-relation-changed"}
	// LeaderElected is `leader-elected`.
	LeaderElected = Event{name: "leader-elected"}
	// UpdateStatus is `update-status`.
	UpdateStatus = Event{name: "update-status"}
	// LockGranted is the custom hook `rollingops_lock_granted`, which the library
	// dispatches itself.
	LockGranted = Event{name: "lock-granted"}
	// EtcdFailed is the custom hook `rollingops_etcd_failed` (dispatched by the etcd
	// worker).
	EtcdFailed = Event{name: "etcd-failed"}
	// EtcdRelationCreated is `<etcd>-relation-created`.
	EtcdRelationCreated = Event{name: "etcd-relation-created"}
	// EtcdRelationChanged is `<etcd>-relation-changed`.
	EtcdRelationChanged = Event{name: "etcd-relation-changed"}
	// EtcdRelationBroken is `<etcd>-relation-broken`.
	EtcdRelationBroken = Event{name: "etcd-relation-broken"}
)

// PeerRelationDeparted is `<peer>-relation-departed` of the departing unit.
func PeerRelationDeparted(unit string) Event {
	return Event{name: "peer-relation-departed", payload: unit}
}

// SecretChanged is `secret-changed` of the secret with this label.
func SecretChanged(label string) Event {
	return Event{name: "secret-changed", payload: label}
}

// String is the event's WIT case name, with its payload.
func (e Event) String() string {
	if e.hasPayload() {
		return e.name + "(" + e.payload + ")"
	}
	return e.name
}

func (e Event) hasPayload() bool {
	return e.name == "peer-relation-departed" || e.name == "secret-changed"
}

// json is the event's form in the C ABI: a case name, or a one-key object.
func (e Event) json() string {
	var v any = e.name
	if e.hasPayload() {
		v = map[string]string{e.name: e.payload}
	}
	b, _ := json.Marshal(v)
	return string(b)
}

// The custom hooks the library dispatches.
const (
	// LockGrantedHook is the hook name Juju.Dispatch receives to wake a unit for its turn.
	LockGrantedHook = "rollingops_lock_granted"
	// EtcdFailedHook is the hook the etcd worker dispatches when etcd fails.
	EtcdFailedHook = "rollingops_etcd_failed"
)

// EventForHook maps the running hook to the library's event, if the library reacts to it.
// The hook name is the base of JUJU_DISPATCH_PATH (or JUJU_HOOK_NAME); getenv is
// os.Getenv in a charm.
func EventForHook(cfg Config, getenv func(string) string) (Event, bool) {
	hook := path.Base(getenv("JUJU_DISPATCH_PATH"))
	if hook == "." || hook == "/" || hook == "" {
		hook = getenv("JUJU_HOOK_NAME")
	}
	switch hook {
	case "leader-elected":
		return LeaderElected, true
	case "update-status":
		return UpdateStatus, true
	case LockGrantedHook:
		return LockGranted, true
	case EtcdFailedHook:
		return EtcdFailed, true
	case "secret-changed":
		return SecretChanged(getenv("JUJU_SECRET_LABEL")), true
	}
	if cfg.PeerRelation != "" {
		switch hook {
		case cfg.PeerRelation + "-relation-changed":
			return PeerRelationChanged, true
		case cfg.PeerRelation + "-relation-departed":
			unit := getenv("JUJU_DEPARTING_UNIT")
			if unit == "" {
				unit = getenv("JUJU_REMOTE_UNIT")
			}
			return PeerRelationDeparted(unit), true
		}
	}
	if cfg.EtcdRelation != "" {
		switch hook {
		case cfg.EtcdRelation + "-relation-created":
			return EtcdRelationCreated, true
		case cfg.EtcdRelation + "-relation-changed":
			return EtcdRelationChanged, true
		case cfg.EtcdRelation + "-relation-broken":
			return EtcdRelationBroken, true
		}
	}
	return Event{}, false
}
