package rollingops

import (
	"context"
	"errors"
	"os"
)

// Sentinel errors, one per case of the WIT `error` variant and so one per exception class
// of the reference library. Every error the library returns is an *Error whose Kind is one
// of these; test with errors.Is(err, rollingops.ErrNoRelation).
var (
	// ErrNoRelation is RollingOpsNoRelationError: the peer relation does not exist yet.
	ErrNoRelation = errors.New("no relation")
	// ErrFileSystem is RollingOpsFileSystemError: a file under the base directory could not
	// be read or written, or a path outside it was refused.
	ErrFileSystem = errors.New("file system error")
	// ErrInvalidLockRequest is RollingOpsInvalidLockRequestError: an unknown callback id,
	// kwargs that are not a JSON object, a negative max retry, or an undecodable queue.
	ErrInvalidLockRequest = errors.New("invalid lock request")
	// ErrDecoding is RollingOpsDecodingError: stored data could not be decoded.
	ErrDecoding = errors.New("decoding error")
	// ErrInvalidSecretContent is RollingOpsInvalidSecretContentError.
	ErrInvalidSecretContent = errors.New("invalid secret content")
	// ErrLibMissing is RollingOpsLibMissingError: a piece the library needs is missing.
	ErrLibMissing = errors.New("library missing")
	// ErrEtcdctl is RollingOpsEtcdctlError: an etcdctl invocation failed or was refused.
	ErrEtcdctl = errors.New("etcdctl error")
	// ErrEtcdNotConfigured is RollingOpsEtcdNotConfiguredError.
	ErrEtcdNotConfigured = errors.New("etcd not configured")
	// ErrSyncLock is RollingOpsSyncLockError: the synchronous lock could not be acquired
	// or released (for example an unknown backend id).
	ErrSyncLock = errors.New("sync lock error")
	// ErrTimeout is Python's TimeoutError: the synchronous lock was not acquired in time.
	// A SyncLockBackend reports a timeout by returning an error that matches ErrTimeout,
	// context.DeadlineExceeded or os.ErrDeadlineExceeded.
	ErrTimeout = errors.New("timeout")
	// ErrInvalidArgument is Python's ValueError: an invalid argument, such as a unit that
	// is not on the peer relation.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrHost is RollingOpsError: a host effect (a hook tool) failed.
	ErrHost = errors.New("host error")

	// ErrLoad means the component could not be compiled, loaded or instantiated.
	ErrLoad = errors.New("cannot load the rollingops component")
	// ErrTrap means the component trapped (a bug); the Manager refuses further calls.
	ErrTrap = errors.New("the rollingops component trapped")
	// ErrBadCall means the library was misused: a re-entrant or concurrent call on one
	// Manager, a call after Close, or malformed input to the C layer.
	ErrBadCall = errors.New("bad call")
	// ErrPanic means the native library caught an internal panic; the Manager refuses
	// further calls.
	ErrPanic = errors.New("internal panic in the rollingops library")
)

// Error is every error the library returns: its Kind (a sentinel above), the reference's
// exception class and the message, exactly as the component produced it.
type Error struct {
	// Kind is the sentinel this error matches with errors.Is.
	Kind error
	// Class is the reference library's exception class ("RollingOpsNoRelationError"), or a
	// short name ("Trap") for failures of the library itself.
	Class string
	// Message is the reference's message ("Unknown callback_id: foo").
	Message string
}

func (e *Error) Error() string {
	return "rollingops: " + e.Kind.Error() + ": " + e.Message
}

// Unwrap returns Kind, so errors.Is(err, ErrNoRelation) works.
func (e *Error) Unwrap() error { return e.Kind }

// Codes of the C ABI (enum rollingops_code in host/capi/include/rollingops.h).
type code int32

const (
	codeOK                   code = 0
	codeNoRelation           code = 1
	codeFileSystem           code = 2
	codeInvalidLockRequest   code = 3
	codeDecoding             code = 4
	codeInvalidSecretContent code = 5
	codeLibMissing           code = 6
	codeEtcdctl              code = 7
	codeEtcdNotConfigured    code = 8
	codeSyncLock             code = 9
	codeTimeout              code = 10
	codeInvalidArgument      code = 11
	codeHost                 code = 12
	codeRaised               code = 20
	codeMissing              code = 21
	codeLoad                 code = 30
	codeTrap                 code = 31
	codeBadCall              code = 32
	codePanic                code = 33
)

// kinds maps a code to its sentinel and WIT case name.
var kinds = map[code]struct {
	err      error
	witCase  string
	fallback string
}{
	codeNoRelation:           {ErrNoRelation, "no-relation", "RollingOpsNoRelationError"},
	codeFileSystem:           {ErrFileSystem, "file-system", "RollingOpsFileSystemError"},
	codeInvalidLockRequest:   {ErrInvalidLockRequest, "invalid-lock-request", "RollingOpsInvalidLockRequestError"},
	codeDecoding:             {ErrDecoding, "decoding", "RollingOpsDecodingError"},
	codeInvalidSecretContent: {ErrInvalidSecretContent, "invalid-secret-content", "RollingOpsInvalidSecretContentError"},
	codeLibMissing:           {ErrLibMissing, "lib-missing", "RollingOpsLibMissingError"},
	codeEtcdctl:              {ErrEtcdctl, "etcdctl", "RollingOpsEtcdctlError"},
	codeEtcdNotConfigured:    {ErrEtcdNotConfigured, "etcd-not-configured", "RollingOpsEtcdNotConfiguredError"},
	codeSyncLock:             {ErrSyncLock, "sync-lock", "RollingOpsSyncLockError"},
	codeTimeout:              {ErrTimeout, "timeout", "TimeoutError"},
	codeInvalidArgument:      {ErrInvalidArgument, "invalid-argument", "ValueError"},
	codeHost:                 {ErrHost, "host", "RollingOpsError"},
	codeLoad:                 {ErrLoad, "load", "Load"},
	codeTrap:                 {ErrTrap, "trap", "Trap"},
	codeBadCall:              {ErrBadCall, "bad-call", "BadCall"},
	codePanic:                {ErrPanic, "panic", "Panic"},
}

// newError builds the *Error for a code and message from the C layer.
func newError(c code, message string) *Error {
	k, ok := kinds[c]
	if !ok {
		k = kinds[codeHost]
	}
	return &Error{Kind: k.err, Class: className(c, k.fallback), Message: message}
}

// witCase is the WIT `error` case name of an *Error ("invalid-lock-request"), or "".
func witCase(e *Error) string {
	for _, k := range kinds {
		if k.err == e.Kind {
			return k.witCase
		}
	}
	return ""
}

// codeOf is the code a Go error travels back to the component with: the WIT case it
// matches, else codeHost.
func codeOf(err error) code {
	for c := codeNoRelation; c <= codeHost; c++ {
		if errors.Is(err, kinds[c].err) {
			return c
		}
	}
	return codeHost
}

// codeFor is the code of a sentinel (codeHost when it is none of the WIT cases).
func codeFor(kind error) code {
	for c, k := range kinds {
		if k.err == kind {
			return c
		}
	}
	return codeHost
}

// isTimeout reports whether a sync backend's error means it timed out.
func isTimeout(err error) bool {
	return errors.Is(err, ErrTimeout) || errors.Is(err, context.DeadlineExceeded) ||
		errors.Is(err, os.ErrDeadlineExceeded)
}

// errBusy is returned for a call made while the Manager is inside another call.
func errBusy() error {
	return &Error{
		Kind:    ErrBadCall,
		Class:   "BadCall",
		Message: "the manager is already inside a call (re-entrant or concurrent use)",
	}
}

// errClosed is returned for a call after Close.
func errClosed() error {
	return &Error{Kind: ErrBadCall, Class: "BadCall", Message: "the manager is closed"}
}

// errMissing makes a callback or sync backend report "nothing registered under that id".
var errMissing = errors.New("not registered")
