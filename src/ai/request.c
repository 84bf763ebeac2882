/* Upstream requests: the chat's messages in each dialect's body, and the
 * endpoint URL. Clients send either plain {role, content} messages or the AI
 * SDK's UI messages ({id, role, parts}); both become the same list of
 * (role, text) pairs, which each dialect then writes its own way. */
#include "ai/ai.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sb_ai_dialect_parse(sb_str_t name, sb_ai_dialect_t *out)
{
    if (sb_str_ieq(name, "openai")) {
        *out = SB_AI_OPENAI;
        return 0;
    }
    if (sb_str_ieq(name, "anthropic")) {
        *out = SB_AI_ANTHROPIC;
        return 0;
    }
    return SB_EPARSE;
}

int sb_ai_format_parse(sb_str_t name, sb_ai_format_t *out)
{
    if (sb_str_eq(name, "text")) *out = SB_AI_FMT_TEXT;
    else if (sb_str_eq(name, "sse")) *out = SB_AI_FMT_SSE;
    else if (sb_str_eq(name, "ai-sdk")) *out = SB_AI_FMT_AISDK;
    else return SB_EPARSE;
    return 0;
}

typedef enum { ROLE_NONE, ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT } role_t;

static role_t role_of(const cJSON *m)
{
    const cJSON *r = cJSON_GetObjectItemCaseSensitive(m, "role");
    if (!cJSON_IsString(r)) return ROLE_NONE;
    const char *s = r->valuestring;
    if (strcmp(s, "user") == 0) return ROLE_USER;
    if (strcmp(s, "assistant") == 0) return ROLE_ASSISTANT;
    /* OpenAI renamed system to developer for newer models; both are instructions. */
    if (strcmp(s, "system") == 0 || strcmp(s, "developer") == 0) return ROLE_SYSTEM;
    return ROLE_NONE; /* tool, data, ...: nothing a text relay can pass on */
}

/* Appends one text piece to b, a blank line between pieces. */
static void add_piece(sb_buf_t *b, const char *s)
{
    if (!s[0]) return;
    if (b->len) sb_buf_put(b, "\n\n", 2);
    sb_buf_puts(b, s);
}

/* Appends the text parts of an array: {type:"text", text} items; a bare
 * string item counts as text too. Other part types (files, tools, reasoning,
 * step markers, data) are not text for the upstream. */
static void add_parts(sb_buf_t *b, const cJSON *parts)
{
    const cJSON *p;
    cJSON_ArrayForEach(p, parts)
    {
        if (cJSON_IsString(p)) {
            add_piece(b, p->valuestring);
            continue;
        }
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(p, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(p, "text");
        if (cJSON_IsString(t) && strcmp(t->valuestring, "text") == 0 && cJSON_IsString(text))
            add_piece(b, text->valuestring);
    }
}

/* The text of one message, plain or UI, into b. */
static void message_text(const cJSON *m, sb_buf_t *b)
{
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
    const cJSON *parts = cJSON_GetObjectItemCaseSensitive(m, "parts");
    if (cJSON_IsArray(parts)) add_parts(b, parts);
    else if (cJSON_IsString(content)) add_piece(b, content->valuestring);
    else if (cJSON_IsArray(content)) add_parts(b, content);
}

static cJSON *add_message(cJSON *arr, const char *role, const char *text)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddItemToArray(arr, o);
    if (!cJSON_AddStringToObject(o, "role", role) ||
        !cJSON_AddStringToObject(o, "content", text))
        return NULL;
    return o;
}

int sb_ai_request_body(sb_ai_dialect_t dialect, const char *model, long max_tokens,
                       const char *messages_json, size_t len, char **out, const char **why)
{
    int rc = SB_ENOMEM;
    sb_buf_t text = {0}, system = {0};
    cJSON *root = NULL, *body = NULL;
    *out = NULL;
    root = cJSON_ParseWithLength(messages_json, len);
    if (!cJSON_IsArray(root)) {
        *why = root ? "messages must be a JSON array" : "messages are not valid JSON";
        rc = SB_EPARSE;
        goto fail;
    }
    body = cJSON_CreateObject();
    if (!body || !cJSON_AddStringToObject(body, "model", model ? model : "")) goto fail;
    if (dialect == SB_AI_ANTHROPIC &&
        !cJSON_AddNumberToObject(body, "max_tokens", max_tokens > 0 ? (double)max_tokens : 4096))
        goto fail;
    cJSON *msgs = cJSON_CreateArray();
    if (!msgs) goto fail;
    cJSON_AddItemToObject(body, "messages", msgs);
    int turns = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, root)
    {
        role_t role = role_of(m);
        if (role == ROLE_NONE) continue;
        text.len = 0;
        message_text(m, &text);
        if (text.len == 0) continue; /* e.g. a UI message holding only tool parts */
        sb_buf_put(&text, "", 1);    /* NUL-terminate for cJSON */
        if (text.oom) goto fail;
        if (!sb_utf8_valid((const uint8_t *)text.p, text.len - 1)) {
            *why = "a message's text is not valid UTF-8";
            rc = SB_EPARSE;
            goto fail;
        }
        if (role == ROLE_SYSTEM && dialect == SB_AI_ANTHROPIC) {
            /* Anthropic takes instructions only in the top-level system field. */
            add_piece(&system, text.p);
            continue;
        }
        const char *name = role == ROLE_SYSTEM ? "system"
                           : role == ROLE_USER ? "user"
                                               : "assistant";
        if (!add_message(msgs, name, text.p)) goto fail;
        if (role != ROLE_SYSTEM) turns++;
    }
    if (turns == 0) {
        *why = "no user or assistant message has text";
        rc = SB_EPARSE;
        goto fail;
    }
    if (system.len) {
        sb_buf_put(&system, "", 1);
        if (system.oom || !cJSON_AddStringToObject(body, "system", system.p)) goto fail;
    }
    if (!cJSON_AddTrueToObject(body, "stream")) goto fail;
    *out = cJSON_PrintUnformatted(body);
    if (!*out) goto fail;
    rc = 0;
fail:
    if (rc == SB_ENOMEM) *why = "out of memory";
    cJSON_Delete(root);
    cJSON_Delete(body);
    sb_buf_free(&text);
    sb_buf_free(&system);
    return rc;
}

static bool ends_with(const char *s, size_t n, const char *suffix)
{
    size_t k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

char *sb_ai_endpoint_url(sb_ai_dialect_t dialect, const char *url)
{
    const char *path = dialect == SB_AI_ANTHROPIC ? "/messages" : "/chat/completions";
    size_t n = strlen(url);
    /* A query (Azure's api-version, say) means the operator wrote the whole URL. */
    bool whole = strchr(url, '?') || ends_with(url, n, path);
    while (!whole && n > 0 && url[n - 1] == '/') n--;
    const char *mid = whole ? "" : ends_with(url, n, "/v1") ? "" : "/v1";
    size_t size = n + strlen(mid) + (whole ? 0 : strlen(path)) + 1;
    char *out = malloc(size);
    if (!out) return NULL;
    snprintf(out, size, "%.*s%s%s", (int)n, url, mid, whole ? "" : path);
    return out;
}
