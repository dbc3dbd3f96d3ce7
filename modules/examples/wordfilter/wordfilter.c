/*
 * wordfilter: an example meshd module, built out of tree against the installed header.
 *
 * It refuses every send whose body contains a configured word, with error "forbidden":
 *
 *     [modules]
 *     load = ["auth_token", "route_direct", "wordfilter"]
 *
 *     [wordfilter]
 *     word = "classified"      # required
 *     case_sensitive = false   # optional
 *
 * Build and install (see meshd-modules(3)):
 *
 *     make && sudo make install
 *
 * It shows the parts most modules need: the descriptor and MESHD_MODULE_DEFINE, the key
 * list meshd checks the [wordfilter] section against, reading settings in init and reload,
 * a check hook, and logging through meshd.
 */
#include <meshd/module.h>

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

struct wordfilter {
    meshd_host *host;
    char *word; /* owned copy: the host's string lives only until the next reload */
    size_t word_len;
    int case_sensitive;
};

static const meshd_config_key keys[] = {
    {.name = "word", .type = MESHD_CONFIG_STRING, .min = 1, .max = 0, .reloadable = 1,
     .help = "bodies containing it are refused"},
    {.name = "case_sensitive", .type = MESHD_CONFIG_BOOL, .min = 1, .max = 0, .reloadable = 1,
     .help = "compare letters exactly"},
    {.name = NULL},
};

/* Reads the section into f; on a problem logs why and returns -1, leaving f as it was. */
static int read_settings(struct wordfilter *f) {
    const char *word = NULL;
    size_t len = 0;
    int case_sensitive = 0;
    if (meshd_host_config_string(f->host, "word", &word, &len) != 0 || len == 0) {
        meshd_host_log(f->host, MESHD_LOG_ERROR, "wordfilter.no_word",
                       "set word = \"...\" in [wordfilter]: the word to refuse");
        return -1;
    }
    meshd_host_config_bool(f->host, "case_sensitive", &case_sensitive);
    char *copy = malloc(len + 1);
    if (!copy)
        return -1;
    memcpy(copy, word, len);
    copy[len] = '\0';
    free(f->word);
    f->word = copy;
    f->word_len = len;
    f->case_sensitive = case_sensitive;
    return 0;
}

static int init(meshd_host *host, void **state) {
    struct wordfilter *f = calloc(1, sizeof *f);
    if (!f)
        return -1;
    f->host = host;
    if (read_settings(f) != 0) {
        free(f);
        return -1;
    }
    *state = f;
    return 0;
}

static void fini(void *state) {
    struct wordfilter *f = state;
    free(f->word);
    free(f);
}

static int reload(void *state) {
    return read_settings(state);
}

static int same(unsigned char a, unsigned char b, int case_sensitive) {
    return case_sensitive ? a == b : tolower(a) == tolower(b);
}

static int contains(const char *text, size_t len, const struct wordfilter *f) {
    for (size_t i = 0; i + f->word_len <= len; ++i) {
        size_t j = 0;
        while (j < f->word_len && same((unsigned char)text[i + j], (unsigned char)f->word[j],
                                       f->case_sensitive))
            ++j;
        if (j == f->word_len)
            return 1;
    }
    return 0;
}

static meshd_verdict check(void *state, const meshd_check_request *req,
                           meshd_check_result *out) {
    struct wordfilter *f = state;
    if (!contains(req->body, req->body_len, f))
        return MESHD_PASS;
    out->code = "forbidden";
    out->message = "this server does not accept that message (wordfilter)";
    return MESHD_DENY;
}

static const meshd_module descriptor = {
    .abi = MESHD_MODULE_ABI,
    .name = "wordfilter",
    .version = "1.0.0",
    .init = init,
    .fini = fini,
    .check = check,
    .reload = reload,
    .config = keys,
};

MESHD_MODULE_DEFINE(descriptor)
