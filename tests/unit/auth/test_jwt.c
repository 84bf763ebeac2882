/* JWT HS256: a valid token, every refusal, pattern and permission rules, and a
 * token signed by Node's crypto (interoperability). Tokens under test sit flush
 * against a guard page. */
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "auth/auth.h"
#include "testlib.h"

static const uint8_t K[] = "test-secret";
#define KL (sizeof K - 1)

/* Made with Node 20:
 *   h = b64url('{"alg":"HS256","typ":"JWT"}'); p = b64url(JSON.stringify({sub:"u1",
 *   exp:4102444800, channels:["chat:*","news"], publish:["chat:*"],
 *   info:{name:"Ann",color:"#f00"}}));
 *   crypto.createHmac("sha256","node-secret").update(h+"."+p).digest("base64url") */
static const char NODE_TOKEN[] =
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9."
    "eyJzdWIiOiJ1MSIsImV4cCI6NDEwMjQ0NDgwMCwiY2hhbm5lbHMiOlsiY2hhdDoqIiwibmV3cyJdLCJwdWJsaXNo"
    "IjpbImNoYXQ6KiJdLCJpbmZvIjp7Im5hbWUiOiJBbm4iLCJjb2xvciI6IiNmMDAifX0."
    "xYMNVNZk7UjvK3ruBaxWiu_yLCdxLgS5IcDogKLMOco";

/* The test's own base64url encoder, independent of the one under test. */
static void enc(const void *src, size_t n, char *o)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *s = src;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? s[i + 1] << 8 : 0) |
                     (i + 2 < n ? s[i + 2] : 0);
        *o++ = t[v >> 18];
        *o++ = t[(v >> 12) & 63];
        if (i + 1 < n) *o++ = t[(v >> 6) & 63];
        if (i + 2 < n) *o++ = t[v & 63];
    }
    *o = 0;
}

/* Returns "h.p.<correct HS256 MAC under K>" in a static buffer, so that only the
 * checks after the signature can refuse it. */
static char tokbuf[16384];
static const char *mk(const char *h_b64, const char *p_b64)
{
    unsigned char mac[32];
    unsigned int ml = 32;
    int n = snprintf(tokbuf, sizeof tokbuf - 50, "%s.%s", h_b64, p_b64);
    HMAC(EVP_sha256(), K, (int)KL, (unsigned char *)tokbuf, (size_t)n, mac, &ml);
    tokbuf[n] = '.';
    enc(mac, 32, tokbuf + n + 1);
    return tokbuf;
}

static const char *mkj(const char *hdr_json, const char *claims_json)
{
    static char h[2048], p[12000];
    enc(hdr_json, strlen(hdr_json), h);
    enc(claims_json, strlen(claims_json), p);
    return mk(h, p);
}

static const char *claims(const char *claims_json)
{
    return mkj("{\"alg\":\"HS256\",\"typ\":\"JWT\"}", claims_json);
}

static int verify(const char *tok, int64_t now, sb_token_t *t, sb_err_t *why)
{
    size_t n = strlen(tok);
    char *g = tl_guarded(tok, n);
    int r = sb_auth_jwt_verify(sb_str(g, n), K, KL, now, t, why);
    tl_guard_free(g);
    return r;
}

static void refused(const char *tok, sb_err_t want, const char *what)
{
    sb_token_t t;
    sb_err_t why = SB_OK;
    int r = verify(tok, 1000, &t, &why);
    if (r == 0 || why != want) fprintf(stderr, "  refusal case failed: %s\n", what);
    CHECK(r < 0 && why == want);
    CHECK(t.sub == NULL && t.channels == NULL && t.info_json == NULL); /* zeroed */
    if (r == 0) sb_token_free(&t);
}

static void accepted(const char *tok, const char *what)
{
    sb_token_t t;
    sb_err_t why;
    int r = verify(tok, 1000, &t, &why);
    if (r != 0) fprintf(stderr, "  accept case failed: %s\n", what);
    CHECK(r == 0 && why == SB_OK);
    if (r == 0) sb_token_free(&t);
}

static void valid_token(void)
{
    char *tok = sb_auth_jwt_sign("{\"sub\":\"alice\",\"exp\":2000,\"channels\":[\"chat:*\","
                                 "\"news\"],\"publish\":[\"chat:room1\"],"
                                 "\"info\":{ \"name\" : \"Alice\", \"n\": [1, 2] }}",
                                 K, KL);
    sb_token_t t;
    sb_err_t why;
    CHECK_EQ_INT(verify(tok, 1000, &t, &why), 0);
    CHECK(t.sub && !strcmp(t.sub, "alice"));
    CHECK_EQ_INT(t.exp, 2000);
    CHECK(t.nchannels == 2 && !strcmp(t.channels[0], "chat:*") && !strcmp(t.channels[1], "news"));
    CHECK(t.npublish == 1 && !strcmp(t.publish[0], "chat:room1"));
    CHECK(t.info_json && !strcmp(t.info_json, "{\"name\":\"Alice\",\"n\":[1,2]}"));
    sb_token_free(&t);
    CHECK(t.sub == NULL && t.channels == NULL && t.nchannels == 0);

    /* exp is the first second at which the token is no longer valid. */
    CHECK(verify(tok, 1999, &t, &why) == 0);
    sb_token_free(&t);
    CHECK(verify(tok, 2000, &t, &why) < 0 && why == SB_ERR_TOKEN_EXPIRED);
    CHECK(verify(tok, 3000, &t, &why) < 0 && why == SB_ERR_TOKEN_EXPIRED);
    CHECK(t.sub == NULL);

    /* A forged token: every single flipped bit of the text is refused. */
    size_t n = strlen(tok);
    int forged_ok = 0;
    for (size_t i = 0; i < n; i++)
        for (int b = 0; b < 8; b++) {
            tok[i] ^= (char)(1 << b);
            if (verify(tok, 1000, &t, &why) == 0) {
                forged_ok++;
                sb_token_free(&t);
            }
            tok[i] ^= (char)(1 << b);
        }
    CHECK_EQ_INT(forged_ok, 0);
    /* The same on the raw MAC bytes, re-encoded canonically. */
    char sig[64];
    unsigned char mac[32];
    unsigned int ml = 32;
    const char *dot = strrchr(tok, '.');
    HMAC(EVP_sha256(), K, (int)KL, (unsigned char *)tok, (size_t)(dot - tok), mac, &ml);
    for (int bit = 0; bit < 256; bit++) {
        mac[bit / 8] ^= (unsigned char)(1 << bit % 8);
        enc(mac, 32, sig);
        snprintf(tokbuf, sizeof tokbuf, "%.*s%s", (int)(dot + 1 - tok), tok, sig);
        if (verify(tokbuf, 1000, &t, &why) == 0) {
            forged_ok++;
            sb_token_free(&t);
        }
        mac[bit / 8] ^= (unsigned char)(1 << bit % 8);
    }
    CHECK_EQ_INT(forged_ok, 0);
    enc(mac, 32, sig);
    snprintf(tokbuf, sizeof tokbuf, "%.*s%s", (int)(dot + 1 - tok), tok, sig);
    accepted(tokbuf, "re-encoded unflipped MAC");
    snprintf(tokbuf, sizeof tokbuf, "%s=", tok);
    refused(tokbuf, SB_ERR_UNAUTHORIZED, "padded signature");
    snprintf(tokbuf, sizeof tokbuf, "%.*s", (int)n - 1, tok);
    refused(tokbuf, SB_ERR_UNAUTHORIZED, "truncated signature");

    /* Another secret, or none at all. */
    CHECK(sb_auth_jwt_verify(sb_str(tok, n), K, KL - 1, 1000, &t, &why) < 0);
    CHECK(sb_auth_jwt_verify(sb_str(tok, n), NULL, 0, 1000, &t, &why) < 0);
    CHECK(sb_auth_jwt_sign("{}", K, 0) == NULL);
    free(tok);
}

static void refusals(void)
{
    const sb_err_t U = SB_ERR_UNAUTHORIZED;
    /* Headers with a correct MAC: only the header check can refuse them. */
    const char *bad_hdrs[] = {
        "{\"alg\":\"none\"}", "{\"alg\":\"HS384\"}", "{\"alg\":\"RS256\"}", "{\"alg\":\"hs256\"}",
        "{\"alg\":\"HS256 \"}", "{\"typ\":\"JWT\"}", "{\"alg\":null}", "{\"alg\":[\"HS256\"]}",
        "{\"alg\":\"HS256\",\"typ\":\"JWS\"}", "{\"alg\":\"HS256\",\"typ\":1}",
        "{\"alg\":\"HS256\",\"alg\":\"none\"}", "{\"alg\":\"none\",\"alg\":\"HS256\"}",
        "{\"alg\":\"HS256\",\"crit\":[\"b64\"]}", "[\"HS256\"]", "\"HS256\"", "null", "",
        "{\"alg\":\"HS256\"}x", "{\"alg\":\"HS256\"",
    };
    for (size_t i = 0; i < sizeof bad_hdrs / sizeof *bad_hdrs; i++)
        refused(mkj(bad_hdrs[i], "{\"sub\":\"x\"}"), U, bad_hdrs[i]);
    accepted(mkj("{\"alg\":\"HS256\"}", "{}"), "header without typ");
    accepted(mkj(" {\"typ\":\"JWT\",\"alg\":\"HS256\",\"kid\":\"k1\"}\n", "{}"), "other header");
    /* "alg":"none" with an empty signature, the classic forgery. */
    refused("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", U, "alg none, empty signature");

    /* Shapes. e30 is "{}"; eyJhbGciOiJIUzI1NiJ9 is {"alg":"HS256"}. */
    refused("", U, "empty");
    refused("eyJhbGciOiJIUzI1NiJ9.e30", U, "two parts");
    refused(mk("eyJhbGciOiJIUzI1NiJ9.e30", "e30"), U, "four parts");
    refused(mk("", "e30"), U, "empty header");
    refused(mk("eyJhbGciOiJIUzI1NiJ9", ""), U, "empty payload");
    refused("eyJhbGciOiJIUzI1NiJ9.e30.", U, "empty signature");
    refused("..", U, "only dots");
    refused(mk("eyJhbGciOiJIUzI1NiJ9", "e30="), U, "padding");
    refused(mk("eyJhbGciOiJIUzI1NiJ9=", "e30"), U, "padding in header");
    refused(mk("eyJhbGciOiJIUzI1NiJ9", "e3+0"), U, "standard alphabet");
    refused(mk("eyJhbGciOiJIUzI1NiJ9", "e3 0"), U, "space");
    /* "eyB9" is "{ }"; a fifth 'A' adds only zero bits, so length alone must refuse it. */
    accepted(mk("eyJhbGciOiJIUzI1NiJ9", "eyB9"), "four characters");
    refused(mk("eyJhbGciOiJIUzI1NiJ9", "eyB9A"), U, "length 4k+1");
    refused(mk("eyJhbGciOiJIUzI1NiJ9", "e31"), U, "non-zero leftover bits");
    accepted(mk("eyJhbGciOiJIUzI1NiJ9", "e30"), "the same, well formed");

    /* Payloads that are not one strict JSON object. */
    const char *bad_claims[] = {
        "[]", "[{\"sub\":\"x\"}]", "1", "null", "{\"sub\":\"x\"} {}", "{\"sub\":\"x\",}",
        "{\"sub\":\"a\",\"sub\":\"b\"}", "{\"sub\":\"adm\\u0000x\"}", "{\"sub\":\"a\tb\"}",
        "{\"sub\":\"\xff\"}", "{\"sub\":\"\xc0\xaf\"}", "{\x01\"sub\":\"x\"}",
        /* claims of the wrong type */
        "{\"sub\":5}", "{\"sub\":null}", "{\"sub\":[\"x\"]}", "{\"exp\":\"2000\"}",
        "{\"exp\":true}", "{\"exp\":1e999}", "{\"exp\":-1e999}", "{\"exp\":1e300}",
        "{\"channels\":\"chat\"}", "{\"channels\":{}}", "{\"channels\":[1]}",
        "{\"channels\":[null]}", "{\"channels\":[[\"a\"]]}", "{\"publish\":\"*\"}",
        "{\"publish\":[true]}",
        /* invalid patterns */
        "{\"channels\":[\"ok\",\"bad name\"]}", "{\"channels\":[\"a*b\"]}",
        "{\"channels\":[\"**\"]}",
        "{\"channels\":[\"*a\"]}", "{\"channels\":[\"\"]}", "{\"publish\":[\"chat/1\"]}",
        "{\"publish\":[\"caf\xc3\xa9\"]}",
    };
    for (size_t i = 0; i < sizeof bad_claims / sizeof *bad_claims; i++)
        refused(claims(bad_claims[i]), U, bad_claims[i]);
    const char *good_claims[] = {
        "{}", "{\"sub\":\"caf\xc3\xa9 \\\"q\\\" \\\\u0000\"}", "{\"exp\":1000.5}",
        "{\"iat\":1,\"nbf\":\"x\",\"other\":{\"a\":[1,{}]}}", "{\"info\":null}",
        "{\"info\":\"x\"}", "{\"sub\":\"a\\u0001b\"}",
    };
    for (size_t i = 0; i < sizeof good_claims / sizeof *good_claims; i++)
        accepted(claims(good_claims[i]), good_claims[i]);
    refused(claims("{\"exp\":1000}"), SB_ERR_TOKEN_EXPIRED, "exp == now");
    refused(claims("{\"exp\":999.5}"), SB_ERR_TOKEN_EXPIRED, "fractional exp in the past");
    refused(claims("{\"exp\":-5}"), SB_ERR_TOKEN_EXPIRED, "negative exp");

    /* 8 KiB: find claims whose token is exactly 8192 and 8193 bytes long. */
    static char big[8192];
    int seen = 0;
    for (int len = 6070; len < 6100; len++) {
        snprintf(big, sizeof big, "{\"sub\":\"%0*d\"}", len, 0);
        char *t = sb_auth_jwt_sign(big, K, KL);
        size_t tl = strlen(t);
        if (tl <= 8192) accepted(t, "token up to 8 KiB");
        else refused(t, U, "token over 8 KiB");
        seen |= (tl == 8192) | (tl == 8193) << 1;
        free(t);
    }
    CHECK_EQ_INT(seen, 3);
}

static void patterns(void)
{
    static const struct {
        const char *pat, *ch;
        bool match;
    } m[] = {
        {"*", "x", true},           {"*", "chat:room", true},    {"chat:*", "chat:", true},
        {"chat:*", "chat:1", true}, {"chat:*", "chat", false},   {"chat:*", "chatroom", false},
        {"chat:*", "Chat:1", false}, {"a*", "a", true},          {"a*", "abc", true},
        {"a*", "b", false},         {"a*", "ba", false},         {"news", "news", true},
        {"news", "newsy", false},   {"news", "new", false},      {"news", "NEWS", false},
    };
    for (size_t i = 0; i < sizeof m / sizeof *m; i++) {
        CHECK(sb_auth_pattern_valid(m[i].pat));
        char *g = tl_guarded(m[i].ch, strlen(m[i].ch));
        bool r = sb_auth_pattern_match(m[i].pat, sb_str(g, strlen(m[i].ch)));
        tl_guard_free(g);
        if (r != m[i].match) fprintf(stderr, "  match(%s, %s)\n", m[i].pat, m[i].ch);
        CHECK(r == m[i].match);
    }
    static const struct {
        const char *pat;
        bool ok;
    } v[] = {
        {"*", true},      {"chat:*", true},  {"user@x.y-z_1", true}, {"A9*", true},
        {"", false},      {"**", false},     {"a*b", false},         {"*a", false},
        {"a b", false},   {"a/b", false},    {"a\n", false},         {"caf\xc3\xa9", false},
    };
    for (size_t i = 0; i < sizeof v / sizeof *v; i++) {
        if (sb_auth_pattern_valid(v[i].pat) != v[i].ok) fprintf(stderr, "  valid(%s)\n", v[i].pat);
        CHECK(sb_auth_pattern_valid(v[i].pat) == v[i].ok);
    }
    /* A name is 1-128 characters; a prefix before '*' may be as long as a name. */
    char p[140];
    memset(p, 'a', sizeof p);
    p[128] = 0;
    CHECK(sb_auth_pattern_valid(p));
    p[128] = '*', p[129] = 0;
    CHECK(sb_auth_pattern_valid(p));
    p[128] = 'a';
    CHECK(!sb_auth_pattern_valid(p));
}

static void permissions(void)
{
    sb_token_t t;
    sb_err_t why;
    /* No channels claim: the token only names the user, and may subscribe anywhere. */
    CHECK_EQ_INT(verify(claims("{\"sub\":\"bob\"}"), 1000, &t, &why), 0);
    CHECK(t.channels == NULL && t.publish == NULL && t.info_json == NULL && t.exp == 0);
    CHECK(sb_auth_can_subscribe(&t, SB_STR("anything")));
    CHECK(!sb_auth_can_publish(&t, SB_STR("anything"))); /* no publish claim: no publishing */
    sb_token_free(&t);
    /* Empty lists grant nothing. */
    CHECK_EQ_INT(verify(claims("{\"channels\":[],\"publish\":[]}"), 1000, &t, &why), 0);
    CHECK(t.sub == NULL && t.nchannels == 0 && t.npublish == 0);
    CHECK(!sb_auth_can_subscribe(&t, SB_STR("news")));
    CHECK(!sb_auth_can_publish(&t, SB_STR("news")));
    sb_token_free(&t);
    CHECK_EQ_INT(verify(claims("{\"channels\":[\"news\",\"chat:*\"],\"publish\":[\"*\"]}"), 1000,
                        &t, &why),
                 0);
    CHECK(sb_auth_can_subscribe(&t, SB_STR("news")) && sb_auth_can_subscribe(&t, SB_STR("chat:1")));
    CHECK(!sb_auth_can_subscribe(&t, SB_STR("newsy")) && !sb_auth_can_subscribe(&t, SB_STR("x")));
    CHECK(sb_auth_can_publish(&t, SB_STR("x")));
    sb_token_free(&t);

    CHECK(sb_auth_ct_equal("abc", 3, "abc", 3) && sb_auth_ct_equal("", 0, "", 0));
    CHECK(!sb_auth_ct_equal("abc", 3, "abd", 3) && !sb_auth_ct_equal("ab", 2, "abc", 3));
    CHECK(!sb_auth_ct_equal("abc", 3, "ab", 2) && !sb_auth_ct_equal("ab\0", 3, "ab", 2));
}

static void node_interop(void)
{
    sb_token_t t;
    sb_err_t why;
    size_t n = strlen(NODE_TOKEN);
    char *g = tl_guarded(NODE_TOKEN, n);
    const uint8_t *key = (const uint8_t *)"node-secret";
    CHECK_EQ_INT(sb_auth_jwt_verify(sb_str(g, n), key, 11, 1763800000, &t, &why), 0);
    CHECK(t.sub && !strcmp(t.sub, "u1") && t.exp == 4102444800);
    CHECK(t.nchannels == 2 && t.npublish == 1);
    CHECK(t.info_json && !strcmp(t.info_json, "{\"name\":\"Ann\",\"color\":\"#f00\"}"));
    CHECK(sb_auth_can_subscribe(&t, SB_STR("news")) && !sb_auth_can_subscribe(&t, SB_STR("newsy")));
    CHECK(sb_auth_can_publish(&t, SB_STR("chat:lobby")));
    CHECK(!sb_auth_can_publish(&t, SB_STR("news")));
    sb_token_free(&t);
    CHECK(sb_auth_jwt_verify(sb_str(g, n), K, KL, 1763800000, &t, &why) < 0);
    tl_guard_free(g);
    /* Our signer spells the header exactly as Node's JSON.stringify does. */
    char *ours = sb_auth_jwt_sign("{}", key, 11);
    CHECK(ours && !strncmp(ours, NODE_TOKEN, 37));
    free(ours);
}

int main(void)
{
    valid_token();
    refusals();
    patterns();
    permissions();
    node_interop();
    return tl_done("jwt");
}
