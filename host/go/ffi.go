package rollingops

// The cgo side of the C ABI (host/capi/include/rollingops.h): one runtime per cache
// directory for the life of the process, one native session per Manager. Host functions
// come back into Go through the exports in host.go.

/*
#cgo CFLAGS: -I${SRCDIR}/../capi/include
#include <stdlib.h>
#include "rollingops.h"

rollingops_host rollingops_go_host(void *user_data);
*/
import "C"

import (
	"context"
	"encoding/json"
	"runtime/cgo"
	"sync"
	"unsafe"
)

var runtimes struct {
	sync.Mutex
	byDir map[string]*C.rollingops_runtime
}

// loadRuntime returns the process's runtime for cacheDir, compiling or loading the
// component the first time.
func loadRuntime(cacheDir string) (*C.rollingops_runtime, error) {
	runtimes.Lock()
	defer runtimes.Unlock()
	if rt, ok := runtimes.byDir[cacheDir]; ok {
		return rt, nil
	}
	var dir *C.char
	if cacheDir != "" {
		dir = C.CString(cacheDir)
		defer C.free(unsafe.Pointer(dir))
	}
	var rt *C.rollingops_runtime
	var msg *C.char
	if c := code(C.rollingops_runtime_new(dir, &rt, &msg)); c != codeOK {
		return nil, takeError(c, msg)
	}
	if runtimes.byDir == nil {
		runtimes.byDir = map[string]*C.rollingops_runtime{}
	}
	runtimes.byDir[cacheDir] = rt
	return rt, nil
}

// className is the C library's class name for a code.
func className(c code, fallback string) string {
	name := C.GoString(C.rollingops_code_class(C.int32_t(c)))
	if name == "" || name == "Unknown" {
		return fallback
	}
	return name
}

// takeError converts and frees a message from the C layer.
func takeError(c code, msg *C.char) error {
	text := takeString(msg)
	return newError(c, text)
}

// takeString copies and frees a string from the C layer.
func takeString(s *C.char) string {
	if s == nil {
		return ""
	}
	defer C.rollingops_string_free(s)
	return C.GoString(s)
}

// session is the native session and everything its host functions need. The cgo handle
// in user data points here (not at the Manager, so that a dropped Manager can be cleaned
// up).
type session struct {
	mu        sync.Mutex // held for the whole of each call (TryLock: no waiting)
	native    *C.rollingops_session
	userData  unsafe.Pointer // C memory holding the cgo handle
	handle    cgo.Handle
	juju      Juju
	callbacks map[string]Callback
	checks    map[string]HealthCheck
	syncLocks map[string]SyncLockBackend
	ctx       context.Context // the running call's context
	panicked  *goPanic        // a panic in Go code called from C, re-raised after the call
}

type goPanic struct{ value any }

func newSession(cacheDir, configJSON string, juju Juju, callbacks map[string]Callback, checks map[string]HealthCheck, syncLocks map[string]SyncLockBackend) (*session, error) {
	rt, err := loadRuntime(cacheDir)
	if err != nil {
		return nil, err
	}
	s := &session{juju: juju, callbacks: callbacks, checks: checks, syncLocks: syncLocks}
	s.handle = cgo.NewHandle(s)
	s.userData = C.malloc(C.size_t(unsafe.Sizeof(C.uintptr_t(0))))
	*(*C.uintptr_t)(s.userData) = C.uintptr_t(s.handle)
	host := C.rollingops_go_host(s.userData)
	cfg := C.CString(configJSON)
	defer C.free(unsafe.Pointer(cfg))
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ctx = context.Background()
	var native *C.rollingops_session
	var msg *C.char
	c := code(C.rollingops_session_new(rt, cfg, &host, &native, &msg))
	s.ctx = nil
	if p := s.panicked; p != nil {
		s.panicked = nil
		s.freeLocked()
		C.rollingops_string_free(msg)
		panic(p.value)
	}
	if c != codeOK {
		s.freeLocked()
		return nil, takeError(c, msg)
	}
	s.native = native
	return s, nil
}

// sessionOf finds the session behind a host function's user data.
func sessionOf(userData unsafe.Pointer) *session {
	return cgo.Handle(*(*C.uintptr_t)(userData)).Value().(*session)
}

func (s *session) close() error {
	if !s.mu.TryLock() {
		return errBusy()
	}
	defer s.mu.Unlock()
	s.freeLocked()
	return nil
}

func (s *session) freeLocked() {
	if s.native != nil {
		C.rollingops_session_free(s.native)
		s.native = nil
	}
	if s.userData != nil {
		s.handle.Delete()
		C.free(s.userData)
		s.userData = nil
	}
}

// call runs one session call: one at a time, with ctx visible to callbacks, and a Go panic
// from a host function re-raised once the native call has returned.
func (s *session) call(ctx context.Context, f func(native *C.rollingops_session, msg **C.char) C.int32_t) error {
	if ctx == nil {
		ctx = context.Background()
	}
	if !s.mu.TryLock() {
		return errBusy()
	}
	defer s.mu.Unlock()
	if s.native == nil {
		return errClosed()
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.ctx = ctx
	var msg *C.char
	c := code(f(s.native, &msg))
	s.ctx = nil
	if p := s.panicked; p != nil {
		s.panicked = nil
		C.rollingops_string_free(msg)
		panic(p.value)
	}
	if c != codeOK {
		return takeError(c, msg)
	}
	return nil
}

func (s *session) requestAsyncLock(ctx context.Context, callbackID, kwargsJSON string, maxRetry *int64) error {
	id := C.CString(callbackID)
	defer C.free(unsafe.Pointer(id))
	kwargs := C.CString(kwargsJSON)
	defer C.free(unsafe.Pointer(kwargs))
	var retry *C.int64_t
	if maxRetry != nil {
		retry = (*C.int64_t)(C.malloc(C.size_t(unsafe.Sizeof(C.int64_t(0)))))
		defer C.free(unsafe.Pointer(retry))
		*retry = C.int64_t(*maxRetry)
	}
	return s.call(ctx, func(n *C.rollingops_session, msg **C.char) C.int32_t {
		return C.rollingops_request_async_lock(n, id, kwargs, retry, msg)
	})
}

func (s *session) requestLock(ctx context.Context, callbackID, kwargsJSON, optionsJSON string) error {
	id := C.CString(callbackID)
	defer C.free(unsafe.Pointer(id))
	kwargs := C.CString(kwargsJSON)
	defer C.free(unsafe.Pointer(kwargs))
	options := C.CString(optionsJSON)
	defer C.free(unsafe.Pointer(options))
	return s.call(ctx, func(n *C.rollingops_session, msg **C.char) C.int32_t {
		return C.rollingops_request_lock(n, id, kwargs, options, msg)
	})
}

func (s *session) setPolicy(ctx context.Context, policyJSON string) error {
	policy := C.CString(policyJSON)
	defer C.free(unsafe.Pointer(policy))
	return s.call(ctx, func(n *C.rollingops_session, msg **C.char) C.int32_t {
		return C.rollingops_set_policy(n, policy, msg)
	})
}

func (s *session) setRank(ctx context.Context, rank int64) error {
	return s.call(ctx, func(n *C.rollingops_session, msg **C.char) C.int32_t {
		return C.rollingops_set_rank(n, C.int64_t(rank), msg)
	})
}

func (s *session) control(ctx context.Context, controlJSON string) (uint32, error) {
	action := C.CString(controlJSON)
	defer C.free(unsafe.Pointer(action))
	changed := (*C.uint32_t)(C.malloc(C.size_t(unsafe.Sizeof(C.uint32_t(0)))))
	defer C.free(unsafe.Pointer(changed))
	*changed = 0
	err := s.call(ctx, func(n *C.rollingops_session, msg **C.char) C.int32_t {
		return C.rollingops_control(n, action, changed, msg)
	})
	if err != nil {
		return 0, err
	}
	return uint32(*changed), nil
}

func (s *session) startRoll(ctx context.Context, callbackID, kwargsJSON, optionsJSON string) (uint64, error) {
	id := C.CString(callbackID)
	defer C.free(unsafe.Pointer(id))
	kwargs := C.CString(kwargsJSON)
	defer C.free(unsafe.Pointer(kwargs))
	options := C.CString(optionsJSON)
	defer C.free(unsafe.Pointer(options))
	generation := (*C.uint64_t)(C.malloc(C.size_t(unsafe.Sizeof(C.uint64_t(0)))))
	defer C.free(unsafe.Pointer(generation))
	*generation = 0
	err := s.call(ctx, func(n *C.rollingops_session, msg **C.char) C.int32_t {
		return C.rollingops_start_roll(n, id, kwargs, options, generation, msg)
	})
	if err != nil {
		return 0, err
	}
	return uint64(*generation), nil
}

func (s *session) handleEvent(ctx context.Context, ev Event) error {
	text := C.CString(ev.json())
	defer C.free(unsafe.Pointer(text))
	return s.call(ctx, func(n *C.rollingops_session, msg **C.char) C.int32_t {
		return C.rollingops_handle_event(n, text, msg)
	})
}

func (s *session) state() (State, error) {
	var out *C.char
	err := s.call(context.Background(), func(n *C.rollingops_session, msg **C.char) C.int32_t {
		return C.rollingops_state(n, &out, msg)
	})
	text := takeString(out)
	if err != nil {
		return State{}, err
	}
	var st State
	if err := json.Unmarshal([]byte(text), &st); err != nil {
		return State{}, &Error{Kind: ErrDecoding, Class: "RollingOpsDecodingError", Message: err.Error()}
	}
	return st, nil
}

func (s *session) isWaiting(unit, callbackID string) (bool, error) {
	var cunit, cid *C.char
	if unit != "" {
		cunit = C.CString(unit)
		defer C.free(unsafe.Pointer(cunit))
	}
	if callbackID != "" {
		cid = C.CString(callbackID)
		defer C.free(unsafe.Pointer(cid))
	}
	var waiting C.bool
	err := s.call(context.Background(), func(n *C.rollingops_session, msg **C.char) C.int32_t {
		return C.rollingops_is_waiting(n, cunit, cid, &waiting, msg)
	})
	return bool(waiting), err
}

func (s *session) acquireSyncLock(ctx context.Context, backendID string, timeoutSeconds *uint32) error {
	id := C.CString(backendID)
	defer C.free(unsafe.Pointer(id))
	var timeout *C.uint32_t
	if timeoutSeconds != nil {
		timeout = (*C.uint32_t)(C.malloc(C.size_t(unsafe.Sizeof(C.uint32_t(0)))))
		defer C.free(unsafe.Pointer(timeout))
		*timeout = C.uint32_t(*timeoutSeconds)
	}
	return s.call(ctx, func(n *C.rollingops_session, msg **C.char) C.int32_t {
		return C.rollingops_acquire_sync_lock(n, id, timeout, msg)
	})
}

func (s *session) releaseSyncLock(ctx context.Context, backendID string) error {
	id := C.CString(backendID)
	defer C.free(unsafe.Pointer(id))
	return s.call(ctx, func(n *C.rollingops_session, msg **C.char) C.int32_t {
		return C.rollingops_release_sync_lock(n, id, msg)
	})
}

func (s *session) describe() (string, error) {
	var out *C.char
	err := s.call(context.Background(), func(n *C.rollingops_session, msg **C.char) C.int32_t {
		return C.rollingops_describe(n, &out, msg)
	})
	text := takeString(out)
	return text, err
}
