package rollingops

// The host functions of the C ABI's vtable (rollingops_host), exported to C and wired up
// by host.c. Each finds its session through the user data, does the effect with the
// session's Juju, callbacks or sync backends, and answers through the reply. A Go panic is
// recovered here (it must not cross C frames), answered as a failure, and re-raised by
// session.call once the native call has returned.

/*
#include <stdbool.h>
#include <stdint.h>
#include "rollingops.h"
*/
import "C"

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unsafe"
)

func replyOK(reply *C.rollingops_reply, data string) {
	C.rollingops_reply_ok(reply, (*C.char)(unsafe.Pointer(unsafe.StringData(data))), C.size_t(len(data)))
}

func replyError(reply *C.rollingops_reply, c code, message string) {
	C.rollingops_reply_error(reply, C.int32_t(c), (*C.char)(unsafe.Pointer(unsafe.StringData(message))), C.size_t(len(message)))
}

// replyJSON answers with v as JSON, or err as the WIT case it matches.
func replyJSON(reply *C.rollingops_reply, v any, err error) {
	if err != nil {
		replyError(reply, codeOf(err), err.Error())
		return
	}
	b, merr := json.Marshal(v)
	if merr != nil {
		replyError(reply, codeHost, merr.Error())
		return
	}
	replyOK(reply, string(b))
}

// guard recovers a panic in a host function: it is kept for session.call to re-raise, and
// the component gets a failure (replying with code c when reply is not nil).
func (s *session) guard(reply *C.rollingops_reply, c code) {
	if v := recover(); v != nil {
		if s.panicked == nil {
			s.panicked = &goPanic{value: v}
		}
		if reply != nil {
			replyError(reply, c, fmt.Sprint("panic: ", v))
		}
	}
}

//export rollingopsGoUnitName
func rollingopsGoUnitName(userData unsafe.Pointer, reply *C.rollingops_reply) {
	s := sessionOf(userData)
	defer s.guard(reply, codeHost)
	replyOK(reply, s.juju.UnitName())
}

//export rollingopsGoModelUUID
func rollingopsGoModelUUID(userData unsafe.Pointer, reply *C.rollingops_reply) {
	s := sessionOf(userData)
	defer s.guard(reply, codeHost)
	replyOK(reply, s.juju.ModelUUID())
}

//export rollingopsGoIsLeader
func rollingopsGoIsLeader(userData unsafe.Pointer, reply *C.rollingops_reply) {
	s := sessionOf(userData)
	defer s.guard(reply, codeHost)
	leader, err := s.juju.IsLeader()
	replyJSON(reply, leader, err)
}

//export rollingopsGoRelationIDs
func rollingopsGoRelationIDs(userData unsafe.Pointer, endpoint *C.char, reply *C.rollingops_reply) {
	s := sessionOf(userData)
	defer s.guard(reply, codeHost)
	ids, err := s.juju.RelationIDs(C.GoString(endpoint))
	if ids == nil {
		ids = []int{}
	}
	replyJSON(reply, ids, err)
}

//export rollingopsGoRelationUnits
func rollingopsGoRelationUnits(userData unsafe.Pointer, relationID C.uint32_t, reply *C.rollingops_reply) {
	s := sessionOf(userData)
	defer s.guard(reply, codeHost)
	units, err := s.juju.RelationUnits(int(relationID))
	if units == nil {
		units = []string{}
	}
	replyJSON(reply, units, err)
}

//export rollingopsGoRelationGet
func rollingopsGoRelationGet(userData unsafe.Pointer, relationID C.uint32_t, unit *C.char, reply *C.rollingops_reply) {
	s := sessionOf(userData)
	defer s.guard(reply, codeHost)
	owner := AppBag
	if unit != nil {
		owner = C.GoString(unit)
	}
	bag, err := s.juju.RelationGet(int(relationID), owner)
	if bag == nil {
		bag = map[string]string{}
	}
	replyJSON(reply, bag, err)
}

//export rollingopsGoRelationSet
func rollingopsGoRelationSet(userData unsafe.Pointer, relationID C.uint32_t, app C.bool, pairsJSON *C.char, reply *C.rollingops_reply) {
	s := sessionOf(userData)
	defer s.guard(reply, codeHost)
	var raw [][2]string
	if err := json.Unmarshal([]byte(C.GoString(pairsJSON)), &raw); err != nil {
		replyError(reply, codeHost, "relation_set: "+err.Error())
		return
	}
	pairs := make([]KeyValue, len(raw))
	for i, p := range raw {
		pairs[i] = KeyValue{Key: p[0], Value: p[1]}
	}
	replyJSON(reply, nil, s.juju.RelationSet(int(relationID), bool(app), pairs))
}

//export rollingopsGoSecretGet
func rollingopsGoSecretGet(userData unsafe.Pointer, labelOrID *C.char, reply *C.rollingops_reply) {
	s := sessionOf(userData)
	defer s.guard(reply, codeHost)
	secrets, ok := s.juju.(Secrets)
	if !ok {
		replyError(reply, codeHost, "secrets are not available in this host")
		return
	}
	content, found, err := secrets.SecretGet(C.GoString(labelOrID))
	if !found {
		content = nil
	}
	replyJSON(reply, content, err)
}

//export rollingopsGoSecretAdd
func rollingopsGoSecretAdd(userData unsafe.Pointer, label *C.char, contentJSON *C.char, reply *C.rollingops_reply) {
	s := sessionOf(userData)
	defer s.guard(reply, codeHost)
	secrets, ok := s.juju.(Secrets)
	if !ok {
		replyError(reply, codeHost, "secrets are not available in this host")
		return
	}
	var content map[string]string
	if err := json.Unmarshal([]byte(C.GoString(contentJSON)), &content); err != nil {
		replyError(reply, codeHost, "secret_add: "+err.Error())
		return
	}
	id, err := secrets.SecretAdd(C.GoString(label), content)
	if err != nil {
		replyError(reply, codeOf(err), err.Error())
		return
	}
	replyOK(reply, id)
}

//export rollingopsGoSecretGrant
func rollingopsGoSecretGrant(userData unsafe.Pointer, id *C.char, relationID C.uint32_t, reply *C.rollingops_reply) {
	s := sessionOf(userData)
	defer s.guard(reply, codeHost)
	secrets, ok := s.juju.(Secrets)
	if !ok {
		replyError(reply, codeHost, "secrets are not available in this host")
		return
	}
	replyJSON(reply, nil, secrets.SecretGrant(C.GoString(id), int(relationID)))
}

//export rollingopsGoRelationGetRemoteApp
func rollingopsGoRelationGetRemoteApp(userData unsafe.Pointer, relationID C.uint32_t, reply *C.rollingops_reply) {
	s := sessionOf(userData)
	defer s.guard(reply, codeHost)
	remote, ok := s.juju.(RemoteApps)
	if !ok {
		replyError(reply, codeHost, "this host cannot read a remote application's bag")
		return
	}
	bag, err := remote.RelationGetRemoteApp(int(relationID))
	if bag == nil {
		bag = map[string]string{}
	}
	replyJSON(reply, bag, err)
}

//export rollingopsGoLog
func rollingopsGoLog(userData unsafe.Pointer, level C.int32_t, message *C.char) {
	s := sessionOf(userData)
	defer s.guard(nil, codeHost)
	s.juju.Log(LogLevel(level), C.GoString(message))
}

//export rollingopsGoDispatch
func rollingopsGoDispatch(userData unsafe.Pointer, event *C.char, reply *C.rollingops_reply) {
	s := sessionOf(userData)
	defer s.guard(reply, codeHost)
	replyJSON(reply, nil, s.juju.Dispatch(C.GoString(event)))
}

//export rollingopsGoDispatchAfter
func rollingopsGoDispatchAfter(userData unsafe.Pointer, event *C.char, delayMs C.uint32_t, reply *C.rollingops_reply) {
	s := sessionOf(userData)
	defer s.guard(reply, codeHost)
	later, ok := s.juju.(DelayedDispatcher)
	if !ok {
		replyError(reply, codeHost, "this host cannot dispatch a hook after a delay")
		return
	}
	delay := time.Duration(delayMs) * time.Millisecond
	replyJSON(reply, nil, later.DispatchAfter(C.GoString(event), delay))
}

//export rollingopsGoNowMicros
func rollingopsGoNowMicros(userData unsafe.Pointer) C.int64_t {
	s := sessionOf(userData)
	defer s.guard(nil, codeHost)
	return C.int64_t(s.juju.Now().UnixMicro())
}

//export rollingopsGoSleepMs
func rollingopsGoSleepMs(userData unsafe.Pointer, ms C.uint64_t) {
	s := sessionOf(userData)
	defer s.guard(nil, codeHost)
	d := time.Duration(ms) * time.Millisecond
	if sleeper, ok := s.juju.(Sleeper); ok {
		sleeper.Sleep(d)
		return
	}
	time.Sleep(d)
}

//export rollingopsGoRunCallback
func rollingopsGoRunCallback(userData unsafe.Pointer, id *C.char, kwargsJSON *C.char, reply *C.rollingops_reply) {
	s := sessionOf(userData)
	defer s.guard(reply, codeRaised)
	name := C.GoString(id)
	callback, ok := s.callbacks[name]
	if !ok {
		check, isCheck := s.checks[name]
		if !isCheck {
			replyError(reply, codeMissing, "")
			return
		}
		callback = check.callback()
	}
	raw := C.GoString(kwargsJSON)
	var kwargs map[string]any
	if err := json.Unmarshal([]byte(raw), &kwargs); err != nil {
		replyError(reply, codeRaised, "kwargs: "+err.Error())
		return
	}
	ctx := context.WithValue(s.context(), kwargsKey{}, raw)
	result, err := callback(ctx, kwargs)
	switch {
	case errors.Is(err, errMissing):
		replyError(reply, codeMissing, "")
	case err != nil:
		replyError(reply, codeRaised, err.Error())
	case result == "":
		replyOK(reply, "null")
	default:
		b, _ := json.Marshal(string(result))
		replyOK(reply, string(b))
	}
}

//export rollingopsGoSyncAcquire
func rollingopsGoSyncAcquire(userData unsafe.Pointer, id *C.char, timeoutSeconds C.int64_t, reply *C.rollingops_reply) {
	s := sessionOf(userData)
	defer s.guard(reply, codeRaised)
	backend, ok := s.syncLocks[C.GoString(id)]
	if !ok {
		replyError(reply, codeMissing, "")
		return
	}
	timeout := NoTimeout
	if timeoutSeconds >= 0 {
		timeout = time.Duration(timeoutSeconds) * time.Second
	}
	replySync(reply, backend.Acquire(s.context(), timeout))
}

//export rollingopsGoSyncRelease
func rollingopsGoSyncRelease(userData unsafe.Pointer, id *C.char, reply *C.rollingops_reply) {
	s := sessionOf(userData)
	defer s.guard(reply, codeRaised)
	backend, ok := s.syncLocks[C.GoString(id)]
	if !ok {
		replyError(reply, codeMissing, "")
		return
	}
	replySync(reply, backend.Release(s.context()))
}

//export rollingopsGoStartWorker
func rollingopsGoStartWorker(userData unsafe.Pointer, reply *C.rollingops_reply) {
	s := sessionOf(userData)
	defer s.guard(reply, codeHost)
	starter, ok := s.juju.(WorkerStarter)
	if !ok {
		replyError(reply, codeEtcdNotConfigured, "this host cannot start the etcd worker")
		return
	}
	replyJSON(reply, nil, starter.StartWorker())
}

// callback adapts a health check to the callback convention: true is the string "true",
// which is what passes a check.
func (check HealthCheck) callback() Callback {
	return func(ctx context.Context, kwargs map[string]any) (Result, error) {
		healthy, err := check(ctx, kwargs)
		if err != nil {
			return "", err
		}
		if healthy {
			return "true", nil
		}
		return "false", nil
	}
}

func replySync(reply *C.rollingops_reply, err error) {
	switch {
	case err == nil:
		replyOK(reply, "")
	case errors.Is(err, errMissing):
		replyError(reply, codeMissing, "")
	case isTimeout(err):
		replyError(reply, codeTimeout, err.Error())
	default:
		replyError(reply, codeRaised, err.Error())
	}
}

func (s *session) context() context.Context {
	if s.ctx == nil {
		return context.Background()
	}
	return s.ctx
}
