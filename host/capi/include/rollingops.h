/*
 * rollingops.h: a C ABI over the rollingops host library (crate `rollingops-capi`).
 *
 * The rolling-operations lock for Juju charms runs as one WebAssembly component
 * (rollingops.wasm, embedded in the library). This header lets any language that links
 * native code drive it in-process: Go through cgo, C, C++…
 *
 *   rollingops_runtime   one per process: the engine and the compiled component
 *                        (loaded from a .cwasm cache directory when one is given).
 *   rollingops_session   one per hook: a fresh instance and its manager
 *                        (`RollingOpsManager(...)`), bound to a host vtable.
 *   rollingops_host      the host effects, as C function pointers plus a user-data
 *                        pointer: identity, leadership, relation data, log, dispatch,
 *                        clock, the charm's callbacks and sync-lock backends.
 *
 * Conventions
 *   - Every call returns an int32_t code (enum rollingops_code). 0 is success; codes 1-12
 *     are the cases of the WIT `error` variant, in declaration order, so they map 1:1 to the
 *     reference library's exception classes (rollingops_code_class()).
 *   - On failure, when `error_message` is not NULL, *error_message receives the message
 *     (UTF-8, NUL-terminated), to be freed with rollingops_string_free(); on success it is
 *     set to NULL.
 *   - Structured data crosses as UTF-8 JSON text. Strings the library returns are freed
 *     with rollingops_string_free(); strings passed in are only read during the call.
 *   - The library never unwinds a panic into the caller: an internal panic becomes
 *     ROLLINGOPS_PANIC and the session it happened in refuses further calls.
 *   - A session is used by one thread at a time. Host functions are called synchronously,
 *     on the calling thread, during a session call. Calling back into the same session from
 *     a host function (or from two threads at once) is refused with ROLLINGOPS_BAD_CALL.
 *
 * JSON shapes
 *   config (rollingops_session_new):
 *     {"peer_relation_name": "restart",          required
 *      "hook_tools": false,                      optional, this default: true makes the
 *                                                library carry every Juju effect itself with
 *                                                the hook tools on PATH (is-leader,
 *                                                relation-*, juju-log, secret-*, juju-exec),
 *                                                reading JUJU_UNIT_NAME, JUJU_MODEL_UUID and
 *                                                JUJU_CHARM_DIR; the vtable then needs only
 *                                                the charm's functions (run_callback and,
 *                                                optionally, the sync backends)
 *      "etcd_relation_name": null,               optional string
 *      "cluster_id": null,                       optional string
 *      "base_dir": "/var/lib/rollingops",        optional, this default
 *      "charm_dir": ".",                         optional, this default ($JUJU_CHARM_DIR
 *                                                with hook_tools); etcdctl lives in
 *                                                <charm_dir>/usr/bin
 *      "callback_ids": ["restart"],              optional, default []
 *      "sync_lock_ids": ["stop-replset-member"]} optional, default []
 *   event (rollingops_handle_event): a WIT `event` case name as a JSON string, or a
 *     one-key object for the cases with a payload:
 *     "peer-relation-changed", "leader-elected", "update-status", "lock-granted",
 *     "etcd-failed", "etcd-relation-created", "etcd-relation-changed",
 *     "etcd-relation-broken", {"peer-relation-departed": "app/2"},
 *     {"secret-changed": "<label>"}
 *   state (rollingops_state): {"status": "not-ready"|"waiting"|"granted"|"idle",
 *                              "processing_backend": "peer"|"etcd"}
 *   request options (rollingops_request_lock; NULL is {}, every key optional):
 *     {"max_retry": null,                  integer >= 0; null retries forever
 *      "health_check": null,               a registered callback id: the lock moves on
 *                                          only once it returns "true" (below)
 *      "health_timeout_seconds": null,     seconds, >= 1; null: 300
 *      "generation_kwarg": null}           kwarg name that receives the grant generation
 *   policy (rollingops_set_policy; every key optional, these defaults):
 *     {"max_concurrent": 1,                units that may hold the lock at once (>= 1)
 *      "grant_timeout_seconds": null,      seconds (>= 1): reclaim a grant not finished
 *      "rank_ordering": false,             lowest rollingops_set_rank() first
 *      "halt_on_health_failure": true}     pause grants when a health check times out
 *   control (rollingops_control): a WIT `control` case, like events:
 *     {"pause": "<reason>"}, "resume", "cancel" (every queued operation of this unit),
 *     {"cancel": "<callback id>"|null}, "force-release" (every grant),
 *     {"force-release": "<unit>"|null}
 *   roll options (rollingops_start_roll; NULL is {}, every key optional):
 *     {"health_check": null, "health_timeout_seconds": null,
 *      "on_complete": null}                callback the leader runs once every unit has
 *                                          finished, with kwargs {"generation": N}
 *   Unknown keys and values of the wrong type (a negative number where seconds go) are
 *   ROLLINGOPS_BAD_CALL; the component checks the rest with its own error codes (an
 *   unknown callback id or a negative max_retry: ROLLINGOPS_INVALID_LOCK_REQUEST; a
 *   follower calling a leader-only function, a max_concurrent of 0, a roll still in
 *   progress: ROLLINGOPS_INVALID_ARGUMENT).
 *
 * Health checks are ordinary callbacks (run_callback) registered in "callback_ids"; a check
 * passes only when run_callback answers "true" (the JSON string, or the boolean true, which
 * the library maps to it).
 *
 * Build: `cargo build -p rollingops-capi` (add --release for an optimised library) writes
 * target/{debug,release}/librollingops_capi.a. Link it with
 *   -lrollingops_capi -lgcc_s -lutil -lrt -lpthread -lm -ldl -lc
 */
#ifndef ROLLINGOPS_H
#define ROLLINGOPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever a signature or a JSON shape in this header changes, or something is added.
   (rollingops_host only grows at its end; zero-initialise it so that functions added later
   are NULL, and rebuild against the header you link with: the library reads the whole
   struct.)
     1  the first version
     2  rollingops_host.dispatch_after; rollingops_request_lock, rollingops_set_policy,
        rollingops_set_rank, rollingops_control, rollingops_start_roll */
#define ROLLINGOPS_ABI_VERSION 2

/* Result codes. */
enum rollingops_code {
    ROLLINGOPS_OK = 0,

    /* The WIT `error` cases (wit/rollingops.wit), in order. */
    ROLLINGOPS_NO_RELATION = 1,            /* RollingOpsNoRelationError */
    ROLLINGOPS_FILE_SYSTEM = 2,            /* RollingOpsFileSystemError */
    ROLLINGOPS_INVALID_LOCK_REQUEST = 3,   /* RollingOpsInvalidLockRequestError */
    ROLLINGOPS_DECODING = 4,               /* RollingOpsDecodingError */
    ROLLINGOPS_INVALID_SECRET_CONTENT = 5, /* RollingOpsInvalidSecretContentError */
    ROLLINGOPS_LIB_MISSING = 6,            /* RollingOpsLibMissingError */
    ROLLINGOPS_ETCDCTL = 7,                /* RollingOpsEtcdctlError */
    ROLLINGOPS_ETCD_NOT_CONFIGURED = 8,    /* RollingOpsEtcdNotConfiguredError */
    ROLLINGOPS_SYNC_LOCK = 9,              /* RollingOpsSyncLockError */
    ROLLINGOPS_TIMEOUT = 10,               /* TimeoutError */
    ROLLINGOPS_INVALID_ARGUMENT = 11,      /* ValueError */
    ROLLINGOPS_HOST = 12,                  /* RollingOpsError: a host effect failed */

    /* Only in host replies (rollingops_reply_error). */
    ROLLINGOPS_RAISED = 20,  /* the callback raised, or the sync backend failed */
    ROLLINGOPS_MISSING = 21, /* nothing is registered under that id */

    /* Failures of the library itself. */
    ROLLINGOPS_LOAD = 30,     /* the component could not be compiled, loaded or instantiated */
    ROLLINGOPS_TRAP = 31,     /* the component trapped; the session refuses further calls */
    ROLLINGOPS_BAD_CALL = 32, /* misuse of this API: NULL argument, invalid UTF-8 or JSON,
                                 a re-entrant or concurrent call on one session */
    ROLLINGOPS_PANIC = 33     /* an internal panic was caught; the session refuses further calls */
};

/* Log levels passed to rollingops_host.log (as `juju-log --log-level`). */
enum rollingops_log_level {
    ROLLINGOPS_LOG_DEBUG = 0,
    ROLLINGOPS_LOG_INFO = 1,
    ROLLINGOPS_LOG_WARNING = 2,
    ROLLINGOPS_LOG_ERROR = 3
};

typedef struct rollingops_runtime rollingops_runtime;
typedef struct rollingops_session rollingops_session;

/*
 * Where a host function writes its answer. Valid only during the host call that received
 * it; answer at most once (the first answer counts). A host function that does not answer
 * fails with ROLLINGOPS_HOST ("the host did not reply").
 */
typedef struct rollingops_reply rollingops_reply;

/* Answer with data (copied; `data` need not be NUL-terminated; NULL with len 0 is ""). */
void rollingops_reply_ok(rollingops_reply *reply, const char *data, size_t len);

/*
 * Answer with a failure: a code 1-12 becomes that WIT error case, ROLLINGOPS_RAISED and
 * ROLLINGOPS_MISSING are for callbacks and sync backends (below); the message is copied.
 */
void rollingops_reply_error(rollingops_reply *reply, int32_t code, const char *message,
                            size_t len);

/*
 * The host: the component's view of Juju and of the charm. Each function gets
 * `user_data` first. Strings passed to it are NUL-terminated UTF-8, valid during the call.
 * With "hook_tools" in the config, only run_callback, sync_backend_acquire and
 * sync_backend_release are used (the others may be NULL).
 * Unless noted, a function answers through `reply`: ok with the data described, or an
 * error (code 1-12, usually ROLLINGOPS_HOST with the hook tool's stderr).
 * Functions marked optional may be NULL.
 */
typedef struct rollingops_host {
    void *user_data;

    /* ok: this unit's name, plain text ("app/0"). */
    void (*unit_name)(void *user_data, rollingops_reply *reply);
    /* ok: the model UUID, plain text. Optional (NULL: ""). */
    void (*model_uuid)(void *user_data, rollingops_reply *reply);
    /* ok: "true" or "false" (`is-leader`). */
    void (*is_leader)(void *user_data, rollingops_reply *reply);
    /* ok: JSON array of relation ids on `endpoint` (`relation-ids`), e.g. [3]. */
    void (*relation_ids)(void *user_data, const char *endpoint, rollingops_reply *reply);
    /* ok: JSON array of the remote unit names on the relation (`relation-list`). */
    void (*relation_units)(void *user_data, uint32_t relation_id, rollingops_reply *reply);
    /* ok: JSON object of string values: the bag of `unit`, or the app bag when `unit` is
       NULL (`relation-get --format=json`). */
    void (*relation_get)(void *user_data, uint32_t relation_id, const char *unit,
                         rollingops_reply *reply);
    /* Write keys in this unit's bag, or the app bag when `app` (`relation-set`).
       `pairs_json` is a JSON array of [key, value] string pairs, applied in order; an empty
       value deletes the key. ok: anything (ignored). */
    void (*relation_set)(void *user_data, uint32_t relation_id, bool app,
                         const char *pairs_json, rollingops_reply *reply);
    /* ok: JSON object of the secret's content, or null when it does not exist
       (`secret-get`). Optional (NULL: ROLLINGOPS_HOST "secrets are not available"). */
    void (*secret_get)(void *user_data, const char *label_or_id, rollingops_reply *reply);
    /* Create an application secret; `content_json` is a JSON object of strings.
       ok: the secret id, plain text. Optional (as secret_get). */
    void (*secret_add)(void *user_data, const char *label, const char *content_json,
                       rollingops_reply *reply);
    /* A log line (`juju-log`); `level` is an enum rollingops_log_level. No reply. */
    void (*log)(void *user_data, int32_t level, const char *message);
    /* Run hook `event_name` on this unit after the current hook, without waiting
       (`juju-exec`). ok: anything. */
    void (*dispatch)(void *user_data, const char *event_name, rollingops_reply *reply);
    /* Microseconds since the Unix epoch (UTC). No reply. */
    int64_t (*now_micros)(void *user_data);
    /* Block for `ms` milliseconds (etcd worker, sync lock). Optional (NULL: the library
       sleeps the thread). No reply. */
    void (*sleep_ms)(void *user_data, uint64_t ms);
    /* Run the charm callback `id` with `kwargs_json` (a JSON object). ok: the returned value
       as JSON: null (None/nothing), a string ("release", "retry-release", "retry-hold";
       any other value means release) or a boolean (true/false become "true"/"false": a
       health check passes on true). ROLLINGOPS_RAISED with a description: the callback
       failed (the operation is retried, RETRY_RELEASE). ROLLINGOPS_MISSING: no such
       callback in this process. */
    void (*run_callback)(void *user_data, const char *id, const char *kwargs_json,
                         rollingops_reply *reply);
    /* `SyncLockBackend.acquire(timeout)` of backend `id`; `timeout_seconds` < 0 means wait
       forever. ok: acquired. ROLLINGOPS_TIMEOUT: timed out. ROLLINGOPS_RAISED: failed.
       ROLLINGOPS_MISSING: no such backend. Optional (NULL: every id is missing). */
    void (*sync_backend_acquire)(void *user_data, const char *id, int64_t timeout_seconds,
                                 rollingops_reply *reply);
    /* `SyncLockBackend.release()` of backend `id`; replies as sync_backend_acquire. */
    void (*sync_backend_release)(void *user_data, const char *id, rollingops_reply *reply);
    /* Start this unit's etcd worker (a detached process that runs the component's
       run-worker outside any hook) unless one is running; return at once. ok: started or
       already running. Optional (NULL: ROLLINGOPS_ETCD_NOT_CONFIGURED). */
    void (*start_worker)(void *user_data, rollingops_reply *reply);
    /* Grant application secret `id` to relation `relation_id` (`secret-grant`). ok:
       anything. Optional (NULL: ROLLINGOPS_HOST "secrets are not available"). */
    void (*secret_grant)(void *user_data, const char *id, uint32_t relation_id,
                         rollingops_reply *reply);
    /* ok: JSON object of the remote application's bag on the relation (`relation-get --app
       - <remote-app>`), {} when it wrote nothing. Optional (NULL: ROLLINGOPS_HOST). */
    void (*relation_get_remote_app)(void *user_data, uint32_t relation_id,
                                    rollingops_reply *reply);
    /* Since ABI version 2. Run hook `event_name` on this unit no sooner than `delay_ms`
       milliseconds from now (health re-checks, grant timeouts), and return at once: never
       sleep here, start something that waits outside the hook (a detached
       `sh -c 'sleep …; exec juju-exec …'`, a timer). ok: anything. Optional (NULL:
       ROLLINGOPS_HOST "this host cannot dispatch a hook after a delay"; the component logs
       it and update-status picks the turn up). */
    void (*dispatch_after)(void *user_data, const char *event_name, uint32_t delay_ms,
                           rollingops_reply *reply);
} rollingops_host;

/* ROLLINGOPS_ABI_VERSION of the linked library. */
int32_t rollingops_abi_version(void);

/* The library's version (static string, do not free). */
const char *rollingops_version(void);

/* The reference exception class of a code 1-12 ("RollingOpsNoRelationError"…), a short name
   for the others ("Trap"…), or "Unknown" (static string, do not free). */
const char *rollingops_code_class(int32_t code);

/* Free a string returned by this library (NULL is ignored). */
void rollingops_string_free(char *s);

/*
 * Compile the embedded component, or load it from `cache_dir` (NULL: no cache) where the
 * compiled form is kept as a .cwasm keyed by the component's hash and the engine. The
 * runtime may be shared by sessions on any thread. Errors: ROLLINGOPS_LOAD.
 */
int32_t rollingops_runtime_new(const char *cache_dir, rollingops_runtime **runtime,
                               char **error_message);

/* How the component was obtained: "hit", "compiled", "rebuilt" or "uncached" (static). */
const char *rollingops_runtime_cache_outcome(const rollingops_runtime *runtime);

/* Free a runtime (NULL is ignored). Sessions created from it stay usable. */
void rollingops_runtime_free(rollingops_runtime *runtime);

/*
 * Instantiate the component and build this hook's manager (`RollingOpsManager(...)`).
 * `host` is copied; its `user_data` must stay valid until rollingops_session_free().
 * Errors: ROLLINGOPS_INVALID_ARGUMENT (e.g. cluster_id without etcd_relation_name),
 * ROLLINGOPS_LOAD, ROLLINGOPS_BAD_CALL (malformed config, missing required host function).
 */
int32_t rollingops_session_new(const rollingops_runtime *runtime, const char *config_json,
                               const rollingops_host *host, rollingops_session **session,
                               char **error_message);

/* End the hook: free the session (NULL is ignored). Never call it from a host function. */
void rollingops_session_free(rollingops_session *session);

/* `request_async_lock(callback_id, kwargs, max_retry)`. `kwargs_json` must be a JSON object
   (NULL: {}); `max_retry` NULL retries forever. */
int32_t rollingops_request_async_lock(rollingops_session *session, const char *callback_id,
                                      const char *kwargs_json, const int64_t *max_retry,
                                      char **error_message);

/* `request-lock(callback_id, kwargs, options)`: queue with options (see "request options"
   above; NULL options_json: the defaults). `kwargs_json` NULL: {}. */
int32_t rollingops_request_lock(rollingops_session *session, const char *callback_id,
                                const char *kwargs_json, const char *options_json,
                                char **error_message);

/* `set-policy` (leader only; see "policy" above). */
int32_t rollingops_set_policy(rollingops_session *session, const char *policy_json,
                              char **error_message);

/* `set-rank`: with rank ordering, lower ranks go first. */
int32_t rollingops_set_rank(rollingops_session *session, int64_t rank, char **error_message);

/* `control` (see "control" above). On success *changed (when not NULL) receives how many
   operations or grants it changed. */
int32_t rollingops_control(rollingops_session *session, const char *control_json,
                           uint32_t *changed, char **error_message);

/* `start-roll` (leader only): every unit runs `callback_id` with `kwargs_json` (NULL: {})
   once (see "roll options" above; NULL options_json: the defaults). On success *generation
   (when not NULL) receives the roll's generation. */
int32_t rollingops_start_roll(rollingops_session *session, const char *callback_id,
                              const char *kwargs_json, const char *options_json,
                              uint64_t *generation, char **error_message);

/* React to a hook or custom event (see "event" above). */
int32_t rollingops_handle_event(rollingops_session *session, const char *event_json,
                                char **error_message);

/* This unit's `RollingOpsState` as JSON (see "state" above); free with
   rollingops_string_free(). */
int32_t rollingops_state(rollingops_session *session, char **state_json, char **error_message);

/* `is_waiting(unit_name)` / `is_waiting_callback(callback_id, unit_name)`: NULL unit_name is
   this unit; NULL callback_id is any operation. */
int32_t rollingops_is_waiting(rollingops_session *session, const char *unit_name,
                              const char *callback_id, bool *waiting, char **error_message);

/* Acquire the synchronous lock (etcd when available, else the charm's backend `backend_id`).
   `timeout_seconds` NULL waits forever. A backend timeout is ROLLINGOPS_TIMEOUT. */
int32_t rollingops_acquire_sync_lock(rollingops_session *session, const char *backend_id,
                                     const uint32_t *timeout_seconds, char **error_message);

/* Release the synchronous lock taken by rollingops_acquire_sync_lock(). */
int32_t rollingops_release_sync_lock(rollingops_session *session, const char *backend_id,
                                     char **error_message);

/* The long-lived etcd worker loop (run in a detached process). */
int32_t rollingops_run_worker(rollingops_session *session, char **error_message);

/* A one-line JSON view of the peer queues and the lock; free with rollingops_string_free(). */
int32_t rollingops_describe(rollingops_session *session, char **describe_json,
                            char **error_message);

#ifdef __cplusplus
}
#endif

#endif /* ROLLINGOPS_H */
