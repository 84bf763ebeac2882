/* The opening handshake pieces: Sec-WebSocket-Accept from the key (the RFC 6455
 * example and other vectors checked with an independent SHA-1), and key validity. */
#include "testlib.h"
#include "ws/frame.h"

static void check_accept(const char *key, const char *expect)
{
    char *g = tl_guarded(key, strlen(key));
    char out[29];
    memset(out, 'x', sizeof(out));
    sb_ws_accept_key(sb_str(g, strlen(key)), out);
    CHECK_EQ_STR(out, strlen(out), expect);
    CHECK_EQ_INT(out[28], '\0');
    tl_guard_free(g);
}

static void test_accept(void)
{
    /* RFC 6455 1.3. */
    check_accept("dGhlIHNhbXBsZSBub25jZQ==", "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    check_accept("x3JJHMbDL1EzLkh9GBhXDw==", "HSmrc0sMlYUkAGmm5OPpG2HaGWk=");
    check_accept("AAAAAAAAAAAAAAAAAAAAAA==", "ICX+Yqv66kxgM0FcWaLWlFLwTAI=");
    /* Any bytes hash without overflow; validity is checked separately. */
    check_accept("", "Kfh9QIsMVZcl6xEPYxPHzW8SZ8w=");
    char long_key[1000];
    memset(long_key, 'k', sizeof(long_key) - 1);
    long_key[sizeof(long_key) - 1] = '\0';
    char out[29];
    sb_ws_accept_key(sb_str(long_key, strlen(long_key)), out);
    CHECK_EQ_INT(strlen(out), 28);
}

static bool key_valid(const char *k)
{
    char *g = tl_guarded(k, strlen(k));
    bool ok = sb_ws_key_valid(sb_str(g, strlen(k)));
    tl_guard_free(g);
    return ok;
}

static void test_key_valid(void)
{
    CHECK(key_valid("dGhlIHNhbXBsZSBub25jZQ=="));
    CHECK(key_valid("x3JJHMbDL1EzLkh9GBhXDw=="));
    CHECK(key_valid("AAAAAAAAAAAAAAAAAAAAAA=="));
    CHECK(key_valid("+/+/+/+/+/+/+/+/+/+/+w=="));
    CHECK(key_valid("zzzzzzzzzzzzzzzzzzzzzz==")); /* non-zero trailing bits still 16 bytes */

    CHECK(!key_valid(""));
    CHECK(!key_valid("dGhlIHNhbXBsZSBub25jZQ"));    /* no padding */
    CHECK(!key_valid("dGhlIHNhbXBsZSBub25jZQ="));   /* 23 */
    CHECK(!key_valid("dGhlIHNhbXBsZSBub25jZQ===")); /* 25 */
    CHECK(!key_valid("dGhlIHNhbXBsZSBub25jZ=A=="));
    CHECK(!key_valid("dGhlIHNhbXBsZSBub25jZQAA")); /* 18 bytes' worth, unpadded */
    CHECK(!key_valid("dGhlIHNhbXBsZSBub25jZQ=A"));
    CHECK(!key_valid("dGhlIHNhbXBs ZSBub25jZQ="));
    CHECK(!key_valid("dGhlIHNhbXBsZSBub25jZ-_=="));  /* base64url is not base64 */
    CHECK(!key_valid("dGhlIHNhbXBsZSBub25jZ\xe9=="));
    CHECK(!key_valid("dGhlIHNhbXBsZSBub25jZQ==\r"));
    CHECK(!key_valid("dGhlIHNhbXBsZSBub25jZQ==dGhlIHNhbXBsZSBub25jZQ=="));
    char nul[24] = "dGhlIHNhbXBsZSBub25jZQ==";
    nul[3] = '\0';
    CHECK(!sb_ws_key_valid(sb_str(nul, 24)));
}

int main(void)
{
    test_accept();
    test_key_valid();
    return tl_done("ws/handshake");
}
