/*
 * meshd/module.h: the public C ABI between meshd and its dlopen modules.
 *
 * This is the only public header of meshd. A module is a shared object that exports
 *
 *     int meshd_module_abi(const int *host_abis, int n);
 *     const meshd_module *meshd_module_get(int abi);
 *
 * meshd calls meshd_module_abi() with the ABI numbers it can host; the module answers the one
 * it was built for (or -1), and meshd_module_get() returns its descriptor for that number.
 * A file that exports neither, or answers -1, is refused with a message naming the file.
 *
 * Rules that keep the boundary safe across compilers and standard libraries:
 * - plain C types only: fixed-width integers, pointer + length strings (not NUL-terminated
 *   unless said so), opaque handles with accessor functions;
 * - structs only grow into their reserved slots, which meshd sets to zero;
 * - strings meshd hands to a hook are valid for the duration of that call only;
 * - every hook runs on meshd's loop thread and must not block. Blocking work goes to
 *   meshd_host_run_job(), whose completion runs back on the loop thread;
 * - no C++ exception may leave a hook.
 *
 * ABI 1 is frozen (the out-of-tree example module builds against the installed header and
 * runs in meshd's tests). Its structs only grow into their reserved slots, which meshd sets
 * to zero and modules leave zero; a change that cannot be made that way takes a new number,
 * and meshd goes on hosting ABI 1 modules. ABI 0 was the unstable draft; meshd refuses it.
 */
#ifndef MESHD_MODULE_H
#define MESHD_MODULE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MESHD_MODULE_ABI 1

#if defined(__GNUC__)
#define MESHD_EXPORT __attribute__((visibility("default")))
#else
#define MESHD_EXPORT
#endif

/* Opaque handles; use the meshd_host_*() functions below. */
typedef struct meshd_host meshd_host;
typedef struct meshd_route_out meshd_route_out;
typedef struct meshd_buf meshd_buf;       /* a growing byte buffer owned by meshd */
typedef struct meshd_metric meshd_metric; /* one metric series in meshd's registry */

/* What a hook decides. PASS: not mine, ask the next module. */
typedef enum meshd_verdict {
    MESHD_PASS = 0,
    MESHD_ALLOW = 1,
    MESHD_DENY = 2,
    MESHD_CHALLENGE = 3 /* auth only: send the client a challenge, then ask me again */
} meshd_verdict;

typedef enum meshd_log_level {
    MESHD_LOG_DEBUG = 0,
    MESHD_LOG_INFO = 1,
    MESHD_LOG_WARN = 2,
    MESHD_LOG_ERROR = 3
} meshd_log_level;

typedef enum meshd_principal_kind {
    MESHD_KIND_USER = 0,
    MESHD_KIND_AGENT = 1
} meshd_principal_kind;

/* ---- auth: a hello (or auth) frame arrived -------------------------------------------- */
/* Step 0 is the hello. A module that answers MESHD_CHALLENGE gets the client's next `auth`
 * frame as step 1, with the challenge bytes it issued (kept by meshd, per connection); no
 * other module is asked at step 1. A new hello starts over at step 0. */
typedef struct meshd_auth_request {
    const char *token; size_t token_len;         /* hello.token or the Bearer header; may be 0 */
    const char *claimed_id; size_t claimed_id_len; /* hello.id, case-folded; may be 0 */
    const char *device; size_t device_len;
    const char *remote_addr; size_t remote_addr_len; /* "ip:port" */
    const char *pubkey; size_t pubkey_len;       /* hello.pubkey as sent (base64); may be 0 */
    int step;                                    /* 0: hello; 1: the auth frame */
    const unsigned char *challenge; size_t challenge_len; /* step 1: what step 0 issued */
    const char *sig; size_t sig_len;             /* step 1: auth.sig as sent (base64) */
    void *reserved[8];
} meshd_auth_request;

/* MESHD_ALLOW: the module writes the principal name (NUL-terminated) into principal, and may
 * name the credential that opened the session in credential (NUL-terminated, for example
 * "ed25519:<base64 key>"); meshd closes the sessions a credential opened when it is revoked.
 * MESHD_DENY: message may point at a NUL-terminated text that lives until the next call.
 * MESHD_CHALLENGE: the module fills challenge[0..challenge_len) (1..64 bytes), which meshd
 * sends as {"type":"challenge","nonce":"<base64>"}; the client must answer within
 * challenge_timeout_ms (0: limits.hello_timeout_ms) or is refused with close 1008. */
typedef struct meshd_auth_result {
    char principal[72];
    const char *message;
    char credential[96];
    unsigned char challenge[64];
    size_t challenge_len;
    uint32_t challenge_timeout_ms;
    void *reserved[8];
} meshd_auth_result;

typedef meshd_verdict (*meshd_auth_cb)(void *state, const meshd_auth_request *req,
                                       meshd_auth_result *out);

/* ---- auth_failed: a client was refused at hello or auth -------------------------------- */
typedef struct meshd_auth_failure {
    const char *remote_ip; size_t remote_ip_len; /* without the port */
    const char *claimed_id; size_t claimed_id_len; /* may be 0 */
    const char *message;                          /* NUL-terminated: why */
    void *reserved[8];
} meshd_auth_failure;

typedef void (*meshd_auth_failed_cb)(void *state, const meshd_auth_failure *ev);

/* ---- route: a send names a target ------------------------------------------------------ */
typedef struct meshd_route_request {
    const char *sender; size_t sender_len;
    const char *to; size_t to_len;               /* as the client wrote it */
    void *reserved[8];
} meshd_route_request;

/* On MESHD_ALLOW the module has added at least one recipient with meshd_route_add().
 * On MESHD_DENY it sets code (a contract error code such as "unknown_peer" or "forbidden")
 * and message, both NUL-terminated and living until the next call. */
typedef struct meshd_route_result {
    const char *code;
    const char *message;
    void *reserved[8];
} meshd_route_result;

typedef meshd_verdict (*meshd_route_cb)(void *state, const meshd_route_request *req,
                                        meshd_route_out *recipients, meshd_route_result *out);

/* ---- check: before storing a send ------------------------------------------------------ */
typedef struct meshd_check_request {
    const char *sender; size_t sender_len;
    const char *to; size_t to_len;
    const char *body; size_t body_len;           /* the body's JSON text */
    size_t recipients;
    void *reserved[8];
} meshd_check_request;

/* MESHD_DENY: set code and message as for route. retry_after_ms > 0 is passed to the client. */
typedef struct meshd_check_result {
    const char *code;
    const char *message;
    uint32_t retry_after_ms;
    void *reserved[8];
} meshd_check_result;

typedef meshd_verdict (*meshd_check_cb)(void *state, const meshd_check_request *req,
                                        meshd_check_result *out);

/* ---- accept: a WebSocket connection was opened, before anything is read ---------------- */
/* MESHD_DENY: meshd sends error{code, message, retry_after_ms} (code defaults to
 * "rate_limited") and closes with 1013 for rate_limited, 1008 for any other code. */
typedef struct meshd_accept_request {
    const char *remote_ip; size_t remote_ip_len; /* without the port */
    void *reserved[8];
} meshd_accept_request;

typedef meshd_verdict (*meshd_accept_cb)(void *state, const meshd_accept_request *req,
                                         meshd_check_result *out);

/* ---- stored: after commit, once per recipient ------------------------------------------ */
typedef struct meshd_stored_event {
    const char *recipient; size_t recipient_len;
    const char *sender; size_t sender_len;
    int64_t seq;                                  /* in the recipient's log */
    int has_live_device;
    void *reserved[8];
} meshd_stored_event;

typedef void (*meshd_stored_cb)(void *state, const meshd_stored_event *ev);

/* ---- connect / disconnect: a session became ready / ended ------------------------------ */
typedef struct meshd_session_event {
    const char *principal; size_t principal_len;
    const char *device; size_t device_len;
    const char *session; size_t session_len;
    meshd_principal_kind kind;
    void *reserved[8];
} meshd_session_event;

typedef void (*meshd_session_cb)(void *state, const meshd_session_event *ev);

/* ---- http: a GET or HEAD on a listener the module opened with meshd_host_http_listen() -- */
typedef struct meshd_http_request {
    const char *method; size_t method_len;       /* "GET" or "HEAD" (others get 405) */
    const char *path; size_t path_len;           /* without the query */
    const char *query; size_t query_len;         /* after '?'; may be 0 */
    const char *remote_addr; size_t remote_addr_len;
    void *reserved[8];
} meshd_http_request;

/* status is preset to 200 and content_type to "text/plain; charset=utf-8"; content_type
 * must be NUL-terminated and live until the next call. The hook appends the body to body
 * with meshd_host_buf_append(). */
typedef struct meshd_http_response {
    int status;
    const char *content_type;
    meshd_buf *body;
    void *reserved[8];
} meshd_http_response;

typedef void (*meshd_http_cb)(void *state, const meshd_http_request *req,
                              meshd_http_response *resp);

typedef void (*meshd_tick_cb)(void *state, int64_t now_ms);
/* reload: the module's table was re-read; return 0 if applied, non-zero to keep the old one.
 * What the module logs at MESHD_LOG_WARN or above during the call is shown to the user (by
 * meshctl reload) as the reason. */
typedef int (*meshd_reload_cb)(void *state);

/* ---- config: the keys of the module's own TOML table ----------------------------------- */
/* meshd validates [NAME] against this list before init and before every reload, and reports
 * an unknown key, a wrong type or an out-of-range value as FILE:LINE:COL: message, like its
 * own keys. A module with no list accepts no keys. */
typedef enum meshd_config_type {
    MESHD_CONFIG_INT = 0,
    MESHD_CONFIG_BOOL = 1,
    MESHD_CONFIG_STRING = 2,
    MESHD_CONFIG_DOUBLE = 3 /* an integer is accepted too */
} meshd_config_type;

typedef struct meshd_config_key {
    const char *name;        /* "key" or "sub.key"; a NULL name ends the list */
    meshd_config_type type;
    double min, max;         /* INT and DOUBLE: the inclusive range; min > max: unbounded */
    int reloadable;          /* 0: a change is reported as needing a restart, and the module
                                keeps seeing the value it started with */
    const char *help;        /* what it means, in a few words; shown in errors */
    void *reserved[4];
} meshd_config_key;

/* ---- assign: who gets work sent to skill:NAME ------------------------------------------ */
/* meshd calls the first module with this hook whenever work for a skill can be assigned: at
 * a send to "skill:NAME" (see meshd_host_route_skill) and for queued work when an agent
 * becomes a candidate. The candidates are the agents (not the sender) whose profile lists
 * the skill, with a device connected and their own status "available", in name order. */
typedef struct meshd_assign_candidate {
    const char *name; size_t name_len;
    uint32_t open_tasks;                         /* unfinished tracked tasks it holds */
    void *reserved[4];
} meshd_assign_candidate;

typedef struct meshd_assign_request {
    const char *skill; size_t skill_len;         /* canonical, without "skill:" */
    const char *sender; size_t sender_len;
    int64_t task;                                /* the work's task id */
    const meshd_assign_candidate *candidates;
    size_t count;                                /* at least 1 */
    void *reserved[8];
} meshd_assign_request;

/* Returns the index of the chosen candidate, or -1 to leave the work queued. */
typedef int (*meshd_assign_cb)(void *state, const meshd_assign_request *req);

/* ---- the descriptor -------------------------------------------------------------------- */
typedef struct meshd_module {
    int abi;                     /* MESHD_MODULE_ABI the module was built against */
    const char *name;            /* NUL-terminated; should equal the file's base name */
    const char *version;         /* NUL-terminated */
    /* init: return 0 and set *state, or non-zero after logging why (meshd refuses to start). */
    int (*init)(meshd_host *host, void **state);
    void (*fini)(void *state);
    meshd_auth_cb auth;
    meshd_route_cb route;
    meshd_check_cb check;
    meshd_stored_cb stored;
    meshd_session_cb connect;
    meshd_session_cb disconnect;
    meshd_tick_cb tick;
    meshd_reload_cb reload;
    meshd_accept_cb accept;
    meshd_auth_failed_cb auth_failed;
    meshd_http_cb http;
    const meshd_config_key *config; /* the keys of [NAME], ended by a NULL name; may be NULL */
    meshd_assign_cb assign;      /* grown into the first reserved slot; zero in older modules */
    void *reserved[11];          /* future hooks (control, ...); zero */
} meshd_module;

/* Exported by every module. */
MESHD_EXPORT int meshd_module_abi(const int *host_abis, int n);
MESHD_EXPORT const meshd_module *meshd_module_get(int abi);

/* Defines both exports for a module built against this header only, from its descriptor
 * (a meshd_module object with .abi = MESHD_MODULE_ABI). Use once, at file scope:
 *     static meshd_module descriptor = {...};
 *     MESHD_MODULE_DEFINE(descriptor)
 */
#ifdef __cplusplus
#define MESHD_MODULE_EXTERN_C extern "C"
#else
#define MESHD_MODULE_EXTERN_C
#endif
#define MESHD_MODULE_DEFINE(descriptor)                                                         \
    MESHD_MODULE_EXTERN_C MESHD_EXPORT int meshd_module_abi(const int *host_abis, int n) {     \
        for (int i = 0; i < n; ++i)                                                             \
            if (host_abis[i] == MESHD_MODULE_ABI)                                               \
                return MESHD_MODULE_ABI;                                                        \
        return -1;                                                                              \
    }                                                                                           \
    MESHD_MODULE_EXTERN_C MESHD_EXPORT const meshd_module *meshd_module_get(int abi) {          \
        return abi == MESHD_MODULE_ABI ? &(descriptor) : (const meshd_module *)0;               \
    }

/* ---- host calls (exported by the meshd executable) ------------------------------------- */
/* Principal and group names may be passed in any case: the host folds them. */

/* Log one event line: level=... module=NAME event=EVENT MESSAGE. */
void meshd_host_log(meshd_host *host, meshd_log_level level, const char *event,
                    const char *message);

/* The module's TOML table [NAME] as flat look-ups. Return 0 and set *out if the key is
 * present with that type, 1 if absent, -1 if present with another type. */
int meshd_host_config_int(meshd_host *host, const char *key, int64_t *out);
int meshd_host_config_bool(meshd_host *host, const char *key, int *out);
/* The string is valid until the next reload. */
int meshd_host_config_string(meshd_host *host, const char *key, const char **out, size_t *len);
/* A DOUBLE key (an integer in the file is converted). */
int meshd_host_config_double(meshd_host *host, const char *key, double *out);

/* Does a live (not deleted) principal of this name exist? 1 yes, 0 no. kind may be NULL. */
int meshd_host_principal_exists(meshd_host *host, const char *name, size_t len,
                                meshd_principal_kind *kind);

/* Verify a bearer token against the stored keyed hashes. On success writes the principal's
 * NUL-terminated name into out (size out_size) and returns 0; returns -1 if unknown. */
int meshd_host_token_verify(meshd_host *host, const char *token, size_t len, char *out,
                            size_t out_size);

/* Is the ed25519 public key `pubkey` (32 raw bytes) registered for the live principal
 * `name` (meshctl key add)? 1 yes, 0 no. */
int meshd_host_key_registered(meshd_host *host, const char *name, size_t len,
                              const unsigned char *pubkey, size_t pubkey_len);

/* Add a recipient while routing. Returns 0, or -1 if no such principal. */
int meshd_host_route_add(meshd_route_out *out, const char *principal, size_t len);

/* Add every member of group `group` (a name without '#') as a recipient, and make the stored
 * address "#group". Returns the number of members, or -1 if there is no such group. */
int meshd_host_route_add_group(meshd_route_out *out, const char *group, size_t len);

/* Route this send to skill `skill` (without "skill:"; any case): meshd stores it in the
 * sender's log and dispatches it through the assign hook, or queues it. The module then
 * answers MESHD_ALLOW without adding recipients. Returns how many agents list the skill in
 * their profile (0: nobody could ever take it; deny with "unknown_peer"), or -1 for a bad
 * skill name. */
int meshd_host_route_skill(meshd_route_out *out, const char *skill, size_t len);

/* Is `principal` a member of `group`? 1 yes, 0 no, -1 no such group. */
int meshd_host_group_has_member(meshd_host *host, const char *group, size_t group_len,
                                const char *principal, size_t principal_len);

/* Milliseconds since the Unix epoch, from the loop's clock. */
int64_t meshd_host_now_ms(meshd_host *host);

/* Run work() on a helper thread, then done() on the loop thread. Returns 0 if queued. */
typedef void (*meshd_job_cb)(void *arg);
int meshd_host_run_job(meshd_host *host, meshd_job_cb work, meshd_job_cb done, void *arg);

/* Append len bytes to a buffer meshd handed to a hook. */
void meshd_host_buf_append(meshd_buf *buf, const char *data, size_t len);

/* ---- metrics: one registry for meshd and its modules ----------------------------------- */
typedef enum meshd_metric_type {
    MESHD_METRIC_COUNTER = 0, /* only goes up: meshd_host_metric_add() with delta >= 0 */
    MESHD_METRIC_GAUGE = 1
} meshd_metric_type;

/* Registers the series name{labels} (or returns the one already registered). name follows
 * Prometheus rules ([a-zA-Z_:][a-zA-Z0-9_:]*; counters should end in _total); labels is the
 * text between the braces, such as reason="send", or NULL. Returns NULL (and logs why) on a
 * bad name or a type that differs from the name's earlier series. Handles live as long as
 * meshd; they may be used from the loop thread only. A module may add series to a core
 * family: a rate limiter counts its refusals as meshd_rate_limited_total{reason="..."} (a
 * counter; meshd itself uses reason="inflight"). meshd(8) lists the core families. */
meshd_metric *meshd_host_metric(meshd_host *host, meshd_metric_type type, const char *name,
                                const char *help, const char *labels);
void meshd_host_metric_add(meshd_metric *metric, double delta);
void meshd_host_metric_set(meshd_metric *metric, double value);

/* Appends every metric of meshd and its modules to out, in the Prometheus text exposition
 * format 0.0.4. Returns 0. */
int meshd_host_metrics_render(meshd_host *host, meshd_buf *out);

/* ---- http: a listener of the module's own ---------------------------------------------- */
/* From init only. Serves HTTP/1.1 on addr ("host:port"; port 0 picks a free one) and hands
 * GET and HEAD requests whose path equals path (other paths get 404) to the module's http
 * hook. Returns 0, or -1 after logging why (a bad address, no http hook). meshd opens the
 * listener with its own and refuses to start if it cannot; the address it really listens
 * on is logged as event=http.listen module=NAME listen=HOST:PORT. */
int meshd_host_http_listen(meshd_host *host, const char *addr, const char *path);

#ifdef __cplusplus
}
#endif

#endif /* MESHD_MODULE_H */
