/* HS256 JWT verification and channel-pattern permissions (auth.h). */
#include <cjson/cJSON.h>
#include <limits.h>
#include <math.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdlib.h>

#include "auth/auth.h"

/* The contract's size limit; it also bounds every decoded part. */
#define MAX_TOKEN 8192

/* 2^53: past it a double no longer holds every whole second exactly. */
#define MAX_EXP 9007199254740992.0

bool sb_auth_ct_equal(const void *a, size_t alen, const void *b, size_t blen)
{
    /* Walk the longer length with no early exit, so time depends on lengths only. */
    const unsigned char *x = a, *y = b;
    size_t n = alen > blen ? alen : blen;
    unsigned char diff = (unsigned char)(alen != blen);
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)((i < alen ? x[i] : 0) ^ (i < blen ? y[i] : 0));
    return diff == 0;
}

static int b64url_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

/* Decodes unpadded base64url into out[0..cap); returns the length or -1. Padding,
 * other alphabets, a length of 4k+1 and non-zero leftover bits are refused, so each
 * byte string has exactly one accepted spelling. */
static int b64url_decode(sb_str_t in, unsigned char *out, size_t cap)
{
    if (in.len % 4 == 1) return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < in.len; i++) {
        int v = b64url_val((unsigned char)in.p[i]);
        if (v < 0) return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap) return -1;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    return acc == 0 ? (int)o : -1;
}

static void b64url_encode(const unsigned char *p, size_t n, sb_buf_t *b)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16;
        if (i + 1 < n) v |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n) v |= p[i + 2];
        char q[4] = {t[v >> 18], t[(v >> 12) & 63], t[(v >> 6) & 63], t[v & 63]};
        sb_buf_put(b, q, n - i >= 3 ? 4 : n - i + 1);
    }
}

static bool hmac256(const uint8_t *key, size_t klen, const void *msg, size_t mlen,
                    unsigned char out[32])
{
    /* An empty key is no secret: anyone could sign, so it verifies nothing. */
    unsigned int len = 0;
    if (!key || klen == 0 || klen > INT_MAX) return false;
    return HMAC(EVP_sha256(), key, (int)klen, msg, mlen, out, &len) && len == 32;
}

bool sb_auth_pattern_valid(const char *p)
{
    size_t n = strlen(p);
    if (n == 1 && p[0] == '*') return true;
    if (n > 1 && p[n - 1] == '*') n--;
    /* What is left is a channel name, or a prefix of one (so "*" alone was handled). */
    return sb_valid_channel(sb_str(p, n));
}

bool sb_auth_pattern_match(const char *pattern, sb_str_t ch)
{
    size_t n = strlen(pattern);
    if (n && pattern[n - 1] == '*') return ch.len >= n - 1 && !memcmp(ch.p, pattern, n - 1);
    return ch.len == n && !memcmp(ch.p, pattern, n);
}

static bool any_match(char **pats, int n, sb_str_t ch)
{
    for (int i = 0; i < n; i++)
        if (sb_auth_pattern_match(pats[i], ch)) return true;
    return false;
}

bool sb_auth_can_subscribe(const sb_token_t *t, sb_str_t ch)
{
    return !t->channels || any_match(t->channels, t->nchannels, ch);
}

bool sb_auth_can_publish(const sb_token_t *t, sb_str_t ch)
{
    return t->publish && any_match(t->publish, t->npublish, ch);
}

void sb_token_free(sb_token_t *t)
{
    free(t->sub);
    for (int i = 0; i < t->nchannels; i++) free(t->channels[i]);
    for (int i = 0; i < t->npublish; i++) free(t->publish[i]);
    free(t->channels);
    free(t->publish);
    free(t->info_json);
    memset(t, 0, sizeof *t);
}

/* cJSON accepts what strict JSON does not, and C strings cannot hold all of JSON:
 * refuse invalid UTF-8, control bytes (other than whitespace between tokens), and
 * the escape \u0000, which cJSON would silently cut a string at ("admin\u0000x"). */
static bool json_clean(const unsigned char *p, size_t n)
{
    if (!sb_utf8_valid(p, n)) return false;
    bool in_str = false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c < 0x20 && (in_str || (c != ' ' && c != '\t' && c != '\n' && c != '\r')))
            return false;
        if (c == '"') {
            in_str = !in_str;
        } else if (in_str && c == '\\') {
            if (i + 5 < n && !memcmp(p + i + 1, "u0000", 5)) return false;
            i++; /* skip the escaped byte, so \" and \\ do not end or start anything */
        }
    }
    return true;
}

/* Decodes one part into buf (MAX_TOKEN bytes) and parses it as a JSON object with
 * no trailing bytes and no repeated member names (a repeated "alg" or "sub" is
 * read differently by different libraries). Returns a new cJSON or NULL. */
static cJSON *parse_part(sb_str_t part, unsigned char *buf)
{
    int n = b64url_decode(part, buf, MAX_TOKEN - 1);
    if (n < 0 || !json_clean(buf, (size_t)n)) return NULL;
    buf[n] = 0;
    cJSON *j = cJSON_ParseWithOpts((const char *)buf, NULL, true);
    if (!cJSON_IsObject(j)) goto fail;
    for (const cJSON *a = j->child; a; a = a->next)
        for (const cJSON *b = a->next; b; b = b->next)
            if (!strcmp(a->string, b->string)) goto fail;
    return j;
fail:
    cJSON_Delete(j);
    return NULL;
}

/* Copies a JSON array of valid patterns; false on any other shape. An empty array
 * still yields a non-NULL vector, so "channels":[] grants nothing rather than all. */
static bool take_patterns(const cJSON *arr, char ***out, int *n)
{
    if (!cJSON_IsArray(arr)) return false;
    char **v = calloc((size_t)cJSON_GetArraySize(arr) + 1, sizeof *v);
    if (!(*out = v)) return false;
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        if (!cJSON_IsString(it) || !sb_auth_pattern_valid(it->valuestring)) return false;
        if (!(v[*n] = strdup(it->valuestring))) return false;
        (*n)++;
    }
    return true;
}

int sb_auth_jwt_verify(sb_str_t tok, const uint8_t *secret, size_t secret_len, int64_t now_s,
                       sb_token_t *out, sb_err_t *why)
{
    memset(out, 0, sizeof *out);
    *why = SB_ERR_UNAUTHORIZED;
    if (tok.len == 0 || tok.len > MAX_TOKEN) return -1;
    const char *end = tok.p + tok.len;
    const char *d1 = memchr(tok.p, '.', tok.len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', (size_t)(end - d1 - 1)) : NULL;
    if (!d2 || memchr(d2 + 1, '.', (size_t)(end - d2 - 1))) return -1;
    sb_str_t h = sb_str(tok.p, (size_t)(d1 - tok.p));
    sb_str_t pl = sb_str(d1 + 1, (size_t)(d2 - d1 - 1));
    sb_str_t sig = sb_str(d2 + 1, (size_t)(end - d2 - 1));
    if (!h.len || !pl.len || !sig.len) return -1;

    /* The signature first: nothing an unauthenticated sender wrote reaches the JSON
     * parser, and no answer depends on what its header claims. */
    unsigned char want[32], got[32], buf[MAX_TOKEN];
    if (!hmac256(secret, secret_len, tok.p, (size_t)(d2 - tok.p), want)) return -1;
    if (b64url_decode(sig, got, sizeof got) != 32 || !sb_auth_ct_equal(got, 32, want, 32))
        return -1;

    int rc = -1;
    cJSON *hdr = parse_part(h, buf), *cl = hdr ? parse_part(pl, buf) : NULL;
    if (!cl) goto done;
    const cJSON *alg = cJSON_GetObjectItemCaseSensitive(hdr, "alg");
    const cJSON *typ = cJSON_GetObjectItemCaseSensitive(hdr, "typ");
    if (!cJSON_IsString(alg) || strcmp(alg->valuestring, "HS256")) goto done;
    if (typ && (!cJSON_IsString(typ) || strcmp(typ->valuestring, "JWT"))) goto done;
    /* "crit" lists extensions a verifier must understand; we understand none. */
    if (cJSON_GetObjectItemCaseSensitive(hdr, "crit")) goto done;

    const cJSON *sub = cJSON_GetObjectItemCaseSensitive(cl, "sub");
    const cJSON *exp = cJSON_GetObjectItemCaseSensitive(cl, "exp");
    const cJSON *chs = cJSON_GetObjectItemCaseSensitive(cl, "channels");
    const cJSON *pub = cJSON_GetObjectItemCaseSensitive(cl, "publish");
    const cJSON *info = cJSON_GetObjectItemCaseSensitive(cl, "info");
    if (sub && (!cJSON_IsString(sub) || !(out->sub = strdup(sub->valuestring)))) goto done;
    if (exp) {
        /* cJSON reads 1e999 as infinity; the range test also refuses it and NaN. */
        if (!cJSON_IsNumber(exp) || !(fabs(exp->valuedouble) <= MAX_EXP)) goto done;
        out->exp = (int64_t)exp->valuedouble;
    }
    if (chs && !take_patterns(chs, &out->channels, &out->nchannels)) goto done;
    if (pub && !take_patterns(pub, &out->publish, &out->npublish)) goto done;
    if (info && !(out->info_json = cJSON_PrintUnformatted(info))) goto done;
    /* Compared as doubles so a fractional exp (allowed by RFC 7519) is not rounded. */
    if (exp && exp->valuedouble <= (double)now_s) {
        *why = SB_ERR_TOKEN_EXPIRED;
        goto done;
    }
    rc = 0;
    *why = SB_OK;
done:
    cJSON_Delete(hdr);
    cJSON_Delete(cl);
    if (rc < 0) sb_token_free(out);
    return rc;
}

char *sb_auth_jwt_sign(const char *claims_json, const uint8_t *secret, size_t secret_len)
{
    static const char hdr[] = "{\"alg\":\"HS256\",\"typ\":\"JWT\"}";
    sb_buf_t b = {0};
    unsigned char mac[32];
    b64url_encode((const unsigned char *)hdr, sizeof hdr - 1, &b);
    sb_buf_put(&b, ".", 1);
    b64url_encode((const unsigned char *)claims_json, strlen(claims_json), &b);
    if (b.oom || !hmac256(secret, secret_len, b.p, b.len, mac)) goto fail;
    sb_buf_put(&b, ".", 1);
    b64url_encode(mac, sizeof mac, &b);
    sb_buf_put(&b, "", 1);
    if (b.oom) goto fail;
    return b.p;
fail:
    sb_buf_free(&b);
    return NULL;
}
