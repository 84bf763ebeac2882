/* Stream decoder: the upstream's SSE events to tokens, one dialect each.
 *
 * The SSE parser cuts the bytes into events; the extractors below read each
 * event's JSON (cJSON) and keep only what the relay needs: the text, the
 * reason the answer stopped, the end marker and in-stream errors. Everything
 * else the providers send (ids, usage, pings, role chunks, tool and thinking
 * blocks) is skipped, and so are event types a provider may add later. */
#include "ai/ai.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

void sb_ai_decoder_init(sb_ai_decoder_t *d, sb_ai_dialect_t dialect)
{
    memset(d, 0, sizeof(*d));
    d->_dialect = dialect;
    sb_ai_sse_init(&d->_sse, 0);
}

static void drop_json(sb_ai_decoder_t *d)
{
    cJSON_Delete(d->_json);
    d->_json = NULL;
}

void sb_ai_decoder_free(sb_ai_decoder_t *d)
{
    drop_json(d);
    sb_ai_sse_free(&d->_sse);
}

/* The finish reasons in the AI SDK's words, so a client never needs to know
 * which provider answered. */
static const char *norm_finish(const char *r)
{
    static const struct {
        const char *from, *to;
    } map[] = {
        {"stop", "stop"},          {"end_turn", "stop"},
        {"stop_sequence", "stop"}, {"length", "length"},
        {"max_tokens", "length"},  {"model_context_window_exceeded", "length"},
        {"content_filter", "content-filter"}, {"refusal", "content-filter"},
        {"tool_calls", "tool-calls"}, {"function_call", "tool-calls"},
        {"tool_use", "tool-calls"},
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if (strcmp(r, map[i].from) == 0) return map[i].to;
    return "other";
}

/* Parses data as exactly one JSON object (trailing bytes other than
 * whitespace make it malformed). */
static cJSON *parse_object(sb_str_t data, const char **why)
{
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(data.p, data.len, &end, false);
    if (!j) {
        *why = "an upstream event is not JSON";
        return NULL;
    }
    const char *stop = data.p + data.len;
    while (end && end < stop && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
        end++;
    if (!cJSON_IsObject(j) || (end && end < stop)) {
        *why = cJSON_IsObject(j) ? "an upstream event has bytes after its JSON"
                                 : "an upstream event is not a JSON object";
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

/* A JSON string with valid UTF-8 as a token's text. cJSON keeps raw bytes of
 * strings as they came, so the check is ours. An empty string is no text. */
static int take_text(const cJSON *s, sb_ai_tok_t *tok, const char **why)
{
    size_t n = strlen(s->valuestring);
    if (n == 0) return 0;
    if (!sb_utf8_valid((const uint8_t *)s->valuestring, n)) {
        *why = "upstream text is not valid UTF-8";
        return SB_EPARSE;
    }
    tok->kind = SB_AI_TOK_TEXT;
    tok->text = sb_str(s->valuestring, n);
    return 0;
}

/* Fills an ERROR token from an error object ({message} or a bare string). */
static void take_error(const cJSON *err, sb_ai_tok_t *tok)
{
    const cJSON *m = cJSON_IsString(err) ? err : cJSON_GetObjectItemCaseSensitive(err, "message");
    tok->kind = SB_AI_TOK_ERROR;
    tok->text = SB_STR("The upstream reported an error in the stream.");
    if (cJSON_IsString(m) && m->valuestring[0] &&
        sb_utf8_valid((const uint8_t *)m->valuestring, strlen(m->valuestring)))
        tok->text = sb_str(m->valuestring, strlen(m->valuestring));
}

/* OpenAI chat.completion.chunk: choices[0].delta.content is the text;
 * finish_reason arrives on the last chunk (with or without content). */
static int openai_event(sb_ai_decoder_t *d, const sb_ai_sse_event_t *ev, sb_ai_tok_t *tok,
                        const char **why)
{
    if (sb_str_eq(ev->data, "[DONE]")) {
        tok->kind = SB_AI_TOK_END;
        return 0;
    }
    cJSON *j = parse_object(ev->data, why);
    if (!j) return SB_EPARSE;
    d->_json = j;
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(j, "error");
    if (err && !cJSON_IsNull(err)) {
        take_error(err, tok);
        return 0;
    }
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(j, "choices");
    const cJSON *c0 = cJSON_IsArray(choices) ? cJSON_GetArrayItem(choices, 0) : NULL;
    if (!cJSON_IsObject(c0)) return 0; /* e.g. the usage chunk has no choices */
    const cJSON *fr = cJSON_GetObjectItemCaseSensitive(c0, "finish_reason");
    if (cJSON_IsString(fr)) d->_finish = norm_finish(fr->valuestring);
    const cJSON *delta = cJSON_GetObjectItemCaseSensitive(c0, "delta");
    if (!cJSON_IsObject(delta)) return 0;
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(delta, "content");
    if (cJSON_IsString(content)) return take_text(content, tok, why);
    /* A refusal streams in its own field; the reader should still see it. */
    const cJSON *refusal = cJSON_GetObjectItemCaseSensitive(delta, "refusal");
    if (cJSON_IsString(refusal)) return take_text(refusal, tok, why);
    return 0;
}

/* Anthropic Messages events: the JSON's type says what the event is (the SSE
 * event name repeats it; we fall back on that name only when type is missing). */
static int anthropic_event(sb_ai_decoder_t *d, const sb_ai_sse_event_t *ev, sb_ai_tok_t *tok,
                           const char **why)
{
    cJSON *j = parse_object(ev->data, why);
    if (!j) return SB_EPARSE;
    d->_json = j;
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "type");
    char name[64];
    if (cJSON_IsString(t)) {
        snprintf(name, sizeof(name), "%s", t->valuestring);
    } else {
        snprintf(name, sizeof(name), "%.*s", (int)ev->event.len, ev->event.p);
    }
    if (strcmp(name, "content_block_delta") == 0) {
        const cJSON *delta = cJSON_GetObjectItemCaseSensitive(j, "delta");
        const cJSON *dt = cJSON_GetObjectItemCaseSensitive(delta, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(delta, "text");
        /* thinking_delta, input_json_delta, signature_delta, ... are not answer text. */
        if (cJSON_IsString(dt) && strcmp(dt->valuestring, "text_delta") == 0 &&
            cJSON_IsString(text))
            return take_text(text, tok, why);
        return 0;
    }
    if (strcmp(name, "content_block_start") == 0) {
        /* The documented start of a text block is empty, but text here is text. */
        const cJSON *cb = cJSON_GetObjectItemCaseSensitive(j, "content_block");
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(cb, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(cb, "text");
        if (cJSON_IsString(ct) && strcmp(ct->valuestring, "text") == 0 && cJSON_IsString(text))
            return take_text(text, tok, why);
        return 0;
    }
    if (strcmp(name, "message_delta") == 0) {
        const cJSON *delta = cJSON_GetObjectItemCaseSensitive(j, "delta");
        const cJSON *sr = cJSON_GetObjectItemCaseSensitive(delta, "stop_reason");
        if (cJSON_IsString(sr)) d->_finish = norm_finish(sr->valuestring);
        return 0;
    }
    if (strcmp(name, "message_stop") == 0) {
        tok->kind = SB_AI_TOK_END;
        return 0;
    }
    if (strcmp(name, "error") == 0) {
        take_error(cJSON_GetObjectItemCaseSensitive(j, "error"), tok);
        return 0;
    }
    return 0; /* ping, message_start, content_block_stop, and types added later */
}

/* Turns one event into *tok and updates the decoder's state. */
static int decode_event(sb_ai_decoder_t *d, const sb_ai_sse_event_t *ev, sb_ai_tok_t *tok,
                        const char **why)
{
    drop_json(d);
    *tok = (sb_ai_tok_t){.kind = SB_AI_TOK_NONE};
    int r = d->_dialect == SB_AI_ANTHROPIC ? anthropic_event(d, ev, tok, why)
                                           : openai_event(d, ev, tok, why);
    if (r < 0) {
        d->_over = true;
        *tok = (sb_ai_tok_t){.kind = SB_AI_TOK_NONE};
        return r;
    }
    if (tok->kind == SB_AI_TOK_END) {
        tok->finish = d->_finish ? d->_finish : "unknown";
        d->_over = d->_ended = true;
    } else if (tok->kind == SB_AI_TOK_ERROR) {
        d->_over = true;
    }
    return 0;
}

int sb_ai_decoder_feed(sb_ai_decoder_t *d, const char *buf, size_t len, sb_ai_tok_t *tok,
                       const char **why)
{
    *tok = (sb_ai_tok_t){.kind = SB_AI_TOK_NONE};
    if (d->_over) return SB_AGAIN; /* after the end everything is ignored */
    sb_ai_sse_event_t ev;
    int n = sb_ai_sse_parse(&d->_sse, buf, len, &ev, why);
    if (n == SB_AGAIN) return SB_AGAIN;
    if (n < 0) {
        d->_over = true;
        return n;
    }
    int r = decode_event(d, &ev, tok, why);
    return r < 0 ? r : n;
}

int sb_ai_decoder_end(sb_ai_decoder_t *d, sb_ai_tok_t *tok, const char **why)
{
    *tok = (sb_ai_tok_t){.kind = SB_AI_TOK_NONE};
    if (d->_ended) {
        tok->kind = SB_AI_TOK_END;
        tok->finish = d->_finish ? d->_finish : "unknown";
        return 0;
    }
    if (d->_over) return SB_AGAIN; /* an error was already handed out */
    sb_ai_sse_event_t ev;
    if (!sb_ai_sse_finish(&d->_sse, &ev)) return SB_AGAIN;
    /* Only an end marker or an error counts here. Anything else, even bytes
     * that do not parse, is what a cut connection leaves: a stream that ended
     * early, not a malformed one. */
    int r = decode_event(d, &ev, tok, why);
    if (r == 0 && (tok->kind == SB_AI_TOK_END || tok->kind == SB_AI_TOK_ERROR)) return 0;
    *tok = (sb_ai_tok_t){.kind = SB_AI_TOK_NONE};
    return SB_AGAIN;
}
