/* Upstream requests: plain and UI messages to each dialect's body, the
 * endpoint URL, and the names of dialects and formats. */
#include "ai/ai.h"
#include "testlib.h"

#include <stdlib.h>
#include <string.h>

static int body(sb_ai_dialect_t d, const char *msgs, char **out, const char **why)
{
    char *g = tl_guarded(msgs, strlen(msgs));
    int rc = sb_ai_request_body(d, "m-1", 0, g, strlen(msgs), out, why);
    tl_guard_free(g);
    return rc;
}

static void expect(sb_ai_dialect_t d, const char *msgs, const char *want)
{
    char *out = NULL;
    const char *why = NULL;
    int rc = body(d, msgs, &out, &why);
    CHECK_EQ_INT(rc, 0);
    if (rc == 0) CHECK_EQ_STR(out, strlen(out), want);
    else fprintf(stderr, "  why: %s\n", why);
    free(out);
}

static void refuse(sb_ai_dialect_t d, const char *msgs, const char *why_has)
{
    char *out = (char *)"untouched";
    const char *why = NULL;
    CHECK_EQ_INT(body(d, msgs, &out, &why), SB_EPARSE);
    CHECK(out == NULL);
    CHECK(why && strstr(why, why_has));
}

static void url(sb_ai_dialect_t d, const char *in, const char *want)
{
    char *u = sb_ai_endpoint_url(d, in);
    CHECK_EQ_STR(u, strlen(u), want);
    free(u);
}

int main(void)
{
    /* Plain messages, both dialects. */
    const char *plain = "[{\"role\":\"system\",\"content\":\"Be brief.\"},"
                        "{\"role\":\"user\",\"content\":\"Hi \\\"you\\\" caf\xC3\xA9\"},"
                        "{\"role\":\"assistant\",\"content\":\"Hello!\"},"
                        "{\"role\":\"user\",\"content\":\"More\\nplease\"}]";
    expect(SB_AI_OPENAI, plain,
           "{\"model\":\"m-1\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
           "{\"role\":\"user\",\"content\":\"Hi \\\"you\\\" caf\xC3\xA9\"},"
           "{\"role\":\"assistant\",\"content\":\"Hello!\"},"
           "{\"role\":\"user\",\"content\":\"More\\nplease\"}],\"stream\":true}");
    expect(SB_AI_ANTHROPIC, plain,
           "{\"model\":\"m-1\",\"max_tokens\":4096,\"messages\":["
           "{\"role\":\"user\",\"content\":\"Hi \\\"you\\\" caf\xC3\xA9\"},"
           "{\"role\":\"assistant\",\"content\":\"Hello!\"},"
           "{\"role\":\"user\",\"content\":\"More\\nplease\"}],"
           "\"system\":\"Be brief.\",\"stream\":true}");

    /* The AI SDK's UI messages, as useChat sends them: text parts joined,
     * other parts (steps, reasoning, tools, files) left out. */
    const char *ui =
        "[{\"id\":\"s\",\"role\":\"system\",\"parts\":[{\"type\":\"text\",\"text\":\"Rules.\"}]},"
        "{\"id\":\"u1\",\"role\":\"user\",\"parts\":[{\"type\":\"text\",\"text\":\"Tell me\"},"
        "{\"type\":\"file\",\"mediaType\":\"image/png\",\"url\":\"data:x\"},"
        "{\"type\":\"text\",\"text\":\"a story\"}]},"
        "{\"id\":\"a1\",\"role\":\"assistant\",\"parts\":[{\"type\":\"step-start\"},"
        "{\"type\":\"reasoning\",\"text\":\"thinking\"},{\"type\":\"text\",\"text\":\"Once\","
        "\"state\":\"done\"},{\"type\":\"tool-weather\",\"toolCallId\":\"t\",\"state\":"
        "\"output-available\",\"input\":{},\"output\":{}}]},"
        "{\"id\":\"a2\",\"role\":\"assistant\","
        "\"parts\":[{\"type\":\"tool-x\",\"toolCallId\":\"y\"}]},"
        "{\"id\":\"u2\",\"role\":\"user\",\"parts\":[{\"type\":\"text\",\"text\":\"go on\"}],"
        "\"metadata\":{\"k\":1}}]";
    expect(SB_AI_OPENAI, ui,
           "{\"model\":\"m-1\",\"messages\":[{\"role\":\"system\",\"content\":\"Rules.\"},"
           "{\"role\":\"user\",\"content\":\"Tell me\\n\\na story\"},"
           "{\"role\":\"assistant\",\"content\":\"Once\"},"
           "{\"role\":\"user\",\"content\":\"go on\"}],\"stream\":true}");
    expect(SB_AI_ANTHROPIC, ui,
           "{\"model\":\"m-1\",\"max_tokens\":4096,\"messages\":["
           "{\"role\":\"user\",\"content\":\"Tell me\\n\\na story\"},"
           "{\"role\":\"assistant\",\"content\":\"Once\"},"
           "{\"role\":\"user\",\"content\":\"go on\"}],\"system\":\"Rules.\",\"stream\":true}");

    /* Content as an array of parts (OpenAI's own shape), developer as system,
     * several system messages for Anthropic, unknown roles and empty texts skipped. */
    expect(SB_AI_ANTHROPIC,
           "[{\"role\":\"developer\",\"content\":\"A\"},{\"role\":\"system\",\"content\":\"B\"},"
           "{\"role\":\"tool\",\"content\":\"r\"},{\"role\":\"user\",\"content\":\"\"},"
           "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"x\"},"
           "{\"type\":\"image_url\",\"image_url\":{\"url\":\"u\"}},\"y\"]},"
           "{\"role\":\"user\"},{\"content\":\"no role\"},7,null]",
           "{\"model\":\"m-1\",\"max_tokens\":4096,\"messages\":["
           "{\"role\":\"user\",\"content\":\"x\\n\\ny\"}],"
           "\"system\":\"A\\n\\nB\",\"stream\":true}");

    /* max_tokens and a missing model. */
    {
        char *out = NULL;
        const char *why = NULL;
        const char *m = "[{\"role\":\"user\",\"content\":\"q\"}]";
        CHECK_EQ_INT(sb_ai_request_body(SB_AI_ANTHROPIC, NULL, 77, m, strlen(m), &out, &why), 0);
        CHECK_EQ_STR(out, strlen(out),
                     "{\"model\":\"\",\"max_tokens\":77,\"messages\":[{\"role\":\"user\","
                     "\"content\":\"q\"}],\"stream\":true}");
        free(out);
    }

    /* Refusals: not JSON, not an array, nothing to send, bad UTF-8. */
    refuse(SB_AI_OPENAI, "", "not valid JSON");
    refuse(SB_AI_OPENAI, "[{\"role\":", "not valid JSON");
    refuse(SB_AI_OPENAI, "{\"messages\":[]}", "array");
    refuse(SB_AI_OPENAI, "[]", "no user or assistant");
    refuse(SB_AI_ANTHROPIC, "[{\"role\":\"system\",\"content\":\"only rules\"}]", "no user");
    refuse(SB_AI_OPENAI, "[{\"role\":\"user\",\"content\":\"\xC3\x28\"}]", "UTF-8");
    refuse(SB_AI_OPENAI, "[{\"role\":\"user\",\"parts\":[{\"type\":\"text\",\"text\":\"\xFF\"}]}]",
           "UTF-8");

    /* Endpoint URLs. */
    url(SB_AI_OPENAI, "https://api.openai.com", "https://api.openai.com/v1/chat/completions");
    url(SB_AI_OPENAI, "https://api.openai.com/v1/", "https://api.openai.com/v1/chat/completions");
    url(SB_AI_OPENAI, "http://127.0.0.1:11434/v1", "http://127.0.0.1:11434/v1/chat/completions");
    url(SB_AI_OPENAI, "http://h/openai/v1/chat/completions", "http://h/openai/v1/chat/completions");
    url(SB_AI_OPENAI, "https://x.azure.com/deploy/chat/completions?api-version=2024-10-21",
        "https://x.azure.com/deploy/chat/completions?api-version=2024-10-21");
    url(SB_AI_ANTHROPIC, "https://api.anthropic.com", "https://api.anthropic.com/v1/messages");
    url(SB_AI_ANTHROPIC, "https://api.anthropic.com/v1/messages",
        "https://api.anthropic.com/v1/messages");
    url(SB_AI_ANTHROPIC, "http://proxy/anthropic//", "http://proxy/anthropic/v1/messages");

    /* Names. */
    sb_ai_dialect_t d;
    sb_ai_format_t f;
    CHECK_EQ_INT(sb_ai_dialect_parse(SB_STR("openai"), &d), 0);
    CHECK_EQ_INT(d, SB_AI_OPENAI);
    CHECK_EQ_INT(sb_ai_dialect_parse(SB_STR("Anthropic"), &d), 0);
    CHECK_EQ_INT(d, SB_AI_ANTHROPIC);
    CHECK_EQ_INT(sb_ai_dialect_parse(SB_STR("gemini"), &d), SB_EPARSE);
    CHECK_EQ_INT(sb_ai_format_parse(SB_STR("text"), &f), 0);
    CHECK_EQ_INT(f, SB_AI_FMT_TEXT);
    CHECK_EQ_INT(sb_ai_format_parse(SB_STR("sse"), &f), 0);
    CHECK_EQ_INT(f, SB_AI_FMT_SSE);
    CHECK_EQ_INT(sb_ai_format_parse(SB_STR("ai-sdk"), &f), 0);
    CHECK_EQ_INT(f, SB_AI_FMT_AISDK);
    CHECK_EQ_INT(sb_ai_format_parse(SB_STR("ai_sdk"), &f), SB_EPARSE);
    CHECK_EQ_INT(sb_ai_format_parse(SB_STR(""), &f), SB_EPARSE);
    return tl_done("ai/request");
}
