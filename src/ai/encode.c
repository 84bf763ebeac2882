/* Output encoders: the relay's tokens in the three formats of PROTOCOL.md.
 *
 * ai-sdk is the AI SDK 5 "UI message stream" protocol: SSE whose data lines
 * are JSON parts, closed by `data: [DONE]`, announced by the response header
 * x-vercel-ai-ui-message-stream: v1. The part shapes were checked against
 * the `ai` package's own schema (uiMessageChunkSchema), and
 * tests/integration/fixtures/ai-sdk-check.mjs feeds our bytes to its reader.
 * The 5.0.0 release validates parts strictly (no unknown keys), so every part
 * carries only the keys that release knows: `finish` has no finishReason. */
#include "ai/ai.h"

#include <stdio.h>
#include <string.h>

/* The id of the answer's one text part. Any string works; the reader only
 * matches text-delta and text-end to their text-start by it. */
#define TEXT_ID "text-1"

void sb_ai_enc_init(sb_ai_enc_t *e, sb_ai_format_t fmt, const char *message_id)
{
    memset(e, 0, sizeof(*e));
    e->_fmt = fmt;
    if (message_id && strlen(message_id) <= 64)
        snprintf(e->_msg_id, sizeof(e->_msg_id), "%s", message_id);
}

const char *sb_ai_content_type(sb_ai_format_t fmt)
{
    return fmt == SB_AI_FMT_TEXT ? "text/plain; charset=utf-8" : "text/event-stream";
}

const char *sb_ai_extra_header(sb_ai_format_t fmt)
{
    return fmt == SB_AI_FMT_AISDK ? "x-vercel-ai-ui-message-stream: v1" : NULL;
}

void sb_ai_enc_start(sb_ai_enc_t *e, sb_buf_t *out)
{
    if (e->_started || e->_over) return;
    e->_started = true;
    if (e->_fmt != SB_AI_FMT_AISDK) return;
    sb_buf_puts(out, "data: {\"type\":\"start\"");
    if (e->_msg_id[0]) {
        sb_buf_puts(out, ",\"messageId\":");
        sb_buf_json_str(out, e->_msg_id, strlen(e->_msg_id));
    }
    sb_buf_puts(out, "}\n\ndata: {\"type\":\"start-step\"}\n\n");
}

void sb_ai_enc_delta(sb_ai_enc_t *e, const char *text, size_t len, sb_buf_t *out)
{
    if (e->_over || len == 0) return;
    sb_ai_enc_start(e, out);
    switch (e->_fmt) {
    case SB_AI_FMT_TEXT:
        sb_buf_put(out, text, len);
        break;
    case SB_AI_FMT_SSE:
        sb_buf_puts(out, "data: {\"text\":");
        sb_buf_json_str(out, text, len);
        sb_buf_puts(out, "}\n\n");
        break;
    case SB_AI_FMT_AISDK:
        if (!e->_text_open) {
            e->_text_open = true;
            sb_buf_puts(out, "data: {\"type\":\"text-start\",\"id\":\"" TEXT_ID "\"}\n\n");
        }
        sb_buf_puts(out, "data: {\"type\":\"text-delta\",\"id\":\"" TEXT_ID "\",\"delta\":");
        sb_buf_json_str(out, text, len);
        sb_buf_puts(out, "}\n\n");
        break;
    }
}

void sb_ai_enc_done(sb_ai_enc_t *e, const char *finish_reason, sb_buf_t *out)
{
    if (e->_over) return;
    sb_ai_enc_start(e, out);
    e->_over = true;
    switch (e->_fmt) {
    case SB_AI_FMT_TEXT:
        break;
    case SB_AI_FMT_SSE:
        sb_buf_puts(out, "data: [DONE]\n\n");
        break;
    case SB_AI_FMT_AISDK:
        if (e->_text_open)
            sb_buf_puts(out, "data: {\"type\":\"text-end\",\"id\":\"" TEXT_ID "\"}\n\n");
        e->_text_open = false;
        sb_buf_puts(out, "data: {\"type\":\"finish-step\"}\n\n"
                         "data: {\"type\":\"finish\"}\n\n"
                         "data: [DONE]\n\n");
        break;
    }
}

void sb_ai_enc_error(sb_ai_enc_t *e, const char *code, const char *message, sb_buf_t *out)
{
    if (e->_over) return;
    sb_ai_enc_start(e, out);
    e->_over = true;
    if (!message) message = "The answer failed.";
    switch (e->_fmt) {
    case SB_AI_FMT_TEXT:
        break;
    case SB_AI_FMT_SSE:
        if (!code) code = SB_AI_E_INTERNAL;
        sb_buf_puts(out, "event: error\ndata: {\"error\":{\"code\":");
        sb_buf_json_str(out, code, strlen(code));
        sb_buf_puts(out, ",\"message\":");
        sb_buf_json_str(out, message, strlen(message));
        sb_buf_puts(out, "}}\n\n");
        break;
    case SB_AI_FMT_AISDK:
        /* useChat shows errorText as the chat's error; the reader stops at it. */
        sb_buf_puts(out, "data: {\"type\":\"error\",\"errorText\":");
        sb_buf_json_str(out, message, strlen(message));
        sb_buf_puts(out, "}\n\ndata: [DONE]\n\n");
        break;
    }
}
