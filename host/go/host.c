// The vtable of host functions handed to rollingops_session_new: the Go exports of host.go.
// The casts add the `const` that cgo's generated declarations leave out.

#include <string.h>

#include "_cgo_export.h"
#include "rollingops.h"

rollingops_host rollingops_go_host(void *user_data) {
    rollingops_host host;
    memset(&host, 0, sizeof host);
    host.user_data = user_data;
    host.unit_name = rollingopsGoUnitName;
    host.model_uuid = rollingopsGoModelUUID;
    host.is_leader = rollingopsGoIsLeader;
    host.relation_ids =
        (void (*)(void *, const char *, rollingops_reply *))rollingopsGoRelationIDs;
    host.relation_units = rollingopsGoRelationUnits;
    host.relation_get =
        (void (*)(void *, uint32_t, const char *, rollingops_reply *))rollingopsGoRelationGet;
    host.relation_set = (void (*)(void *, uint32_t, bool, const char *,
                                  rollingops_reply *))rollingopsGoRelationSet;
    host.secret_get =
        (void (*)(void *, const char *, rollingops_reply *))rollingopsGoSecretGet;
    host.secret_add = (void (*)(void *, const char *, const char *,
                                rollingops_reply *))rollingopsGoSecretAdd;
    host.log = (void (*)(void *, int32_t, const char *))rollingopsGoLog;
    host.dispatch = (void (*)(void *, const char *, rollingops_reply *))rollingopsGoDispatch;
    host.now_micros = rollingopsGoNowMicros;
    host.sleep_ms = rollingopsGoSleepMs;
    host.run_callback = (void (*)(void *, const char *, const char *,
                                  rollingops_reply *))rollingopsGoRunCallback;
    host.sync_backend_acquire = (void (*)(void *, const char *, int64_t,
                                          rollingops_reply *))rollingopsGoSyncAcquire;
    host.sync_backend_release =
        (void (*)(void *, const char *, rollingops_reply *))rollingopsGoSyncRelease;
    host.start_worker = rollingopsGoStartWorker;
    host.secret_grant =
        (void (*)(void *, const char *, uint32_t, rollingops_reply *))rollingopsGoSecretGrant;
    host.relation_get_remote_app = rollingopsGoRelationGetRemoteApp;
    host.dispatch_after = (void (*)(void *, const char *, uint32_t,
                                    rollingops_reply *))rollingopsGoDispatchAfter;
    return host;
}
