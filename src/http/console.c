/* The built-in console page at `GET /`: one self-contained HTML file
 * (src/http/console.html, no external assets), embedded into the binary at
 * build time by cmake/embed.cmake. */
#define _GNU_SOURCE
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

#include "http/http.h"

/* Defined by the C file that cmake/embed.cmake generates in the build tree. */
extern const char sb_console_html[];
extern const size_t sb_console_html_len;

/* Response headers of the page, built once by sb_console_init.
 *
 * Content-Security-Policy: the page's one inline <script> and one inline
 * <style> are allowed by their SHA-256 hashes rather than by 'unsafe-inline'.
 * The page renders data from the network (messages, frames, tokens) that any
 * client may have published; it only ever uses textContent, and the hashes
 * make a slip there harmless too, because an injected <script> or <style>
 * element would not run. The hashes are computed at startup from the embedded
 * bytes, so they cannot drift from the page as it is edited. Inline style
 * attributes stay forbidden (the page sets styles through the CSSOM, which
 * CSP does not restrict). connect-src 'self' covers fetch, the SSE readers and
 * same-origin ws:// (CSP Level 3); the favicon is a data: URL. Nothing may
 * frame the page, and forms never submit anywhere. */
static char console_headers[1024];
static bool console_ready;

/* Writes "'sha256-<base64>'" of the text between the page's only <tag> and its
 * </tag> into out. Returns false when the element is missing or not unique. */
static bool element_hash(const char *tag, char *out, size_t cap)
{
    char open[16], close[16];
    snprintf(open, sizeof open, "<%s", tag);
    snprintf(close, sizeof close, "</%s>", tag);
    const char *page = sb_console_html, *end = page + sb_console_html_len;
    const char *a = memmem(page, sb_console_html_len, open, strlen(open));
    /* The page must hold exactly one such element, written "<tag>": a second
     * one would not match the hash and the browser would block it, so refuse
     * at startup rather than serve a page that half works. */
    if (!a || a + strlen(open) >= end || a[strlen(open)] != '>') return false;
    if (memmem(a + 1, (size_t)(end - a - 1), open, strlen(open))) return false;
    a += strlen(open) + 1;
    const char *b = memmem(a, (size_t)(end - a), close, strlen(close));
    if (!b) return false;

    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(a, (size_t)(b - a), md, &mdlen, EVP_sha256(), NULL)) return false;
    unsigned char b64[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];
    EVP_EncodeBlock(b64, md, (int)mdlen);
    int n = snprintf(out, cap, "'sha256-%s'", (const char *)b64);
    return n > 0 && (size_t)n < cap;
}

static int handle_console(sb_conn_t *c, sb_http_ctx_t *x)
{
    /* "/" is an exact route (the router never treats it as a prefix). */
    if (!console_ready) {
        sb_http_error_msg(c, SB_ERR_INTERNAL, "The console page is not available in this build.");
        return SB_HTTP_DONE;
    }
    sb_http_respond(c, 200, "text/html; charset=utf-8", sb_console_html, sb_console_html_len,
                    console_headers);
    return SB_HTTP_DONE;
}

void sb_console_init(void)
{
    char script[64], style[64];
    if (!element_hash("script", script, sizeof script) ||
        !element_hash("style", style, sizeof style)) {
        /* Only a broken edit of console.html gets here; the API still serves. */
        sb_error("console page unusable", "reason=%s",
                 "it needs exactly one inline <script> and one inline <style>");
        console_ready = false;
    } else {
        int n = snprintf(console_headers, sizeof console_headers,
                         "Cache-Control: no-cache\r\n"
                         "Content-Security-Policy: default-src 'none'; script-src %s; "
                         "style-src %s; connect-src 'self'; img-src data:; base-uri 'none'; "
                         "form-action 'none'; frame-ancestors 'none'\r\n"
                         "X-Content-Type-Options: nosniff\r\n"
                         "X-Frame-Options: DENY\r\n"
                         "Referrer-Policy: no-referrer\r\n",
                         script, style);
        console_ready = n > 0 && (size_t)n < sizeof console_headers;
    }
    /* GET only (HEAD follows GET in the router). Registering more methods
     * would make "/" the handler of, e.g., DELETE on every path, turning the
     * 405 of DELETE /v1/channels/c/messages into a 404. */
    sb_http_route("/", SB_M(SB_HTTP_GET), handle_console);
}
