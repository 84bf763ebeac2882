/* Auth: HS256 JWT verification, channel-pattern permissions, constant-time
 * comparison. Pure functions; any thread. */
#ifndef SB_AUTH_H
#define SB_AUTH_H

#include "core/core.h"

/* The claims Switchboard reads from a token (PROTOCOL.md "Auth"). */
typedef struct {
    char *sub;        /* userId; NULL when absent (malloc, owned) */
    int64_t exp;      /* seconds since epoch; 0 when absent */
    char **channels;  /* subscribe patterns (malloc, owned); NULL when the claim is absent */
    int nchannels;
    char **publish;   /* publish patterns; NULL when absent */
    int npublish;
    char *info_json;  /* the "info" claim re-serialized as compact JSON; NULL when absent */
} sb_token_t;

/* Verifies a compact JWS (header.payload.signature, base64url without padding)
 * signed with HMAC-SHA256 under secret, and extracts the claims into *out (which
 * the caller frees with sb_token_free on success only).
 * Refuses, with *why set:
 *   SB_ERR_UNAUTHORIZED  not three parts, bad base64url, header or payload not a
 *                        JSON object, "alg" other than exactly "HS256" (including
 *                        "none"), a "typ" other than "JWT" when present, a
 *                        signature that does not match (compared in constant time),
 *                        claims of the wrong type (sub not a string, exp not a
 *                        number, channels/publish not arrays of valid patterns),
 *                        a token longer than 8 KiB
 *   SB_ERR_TOKEN_EXPIRED  exp present and exp <= now_s
 * Returns 0 or -1. Borrows token and secret until return. */
int sb_auth_jwt_verify(sb_str_t token, const uint8_t *secret, size_t secret_len, int64_t now_s,
                       sb_token_t *out, sb_err_t *why);

/* Frees what sb_auth_jwt_verify put in *t and zeroes it. */
void sb_token_free(sb_token_t *t);

/* A pattern is a channel name, optionally ending in '*' which matches any suffix
 * (including the empty one); "*" alone matches every channel. */
bool sb_auth_pattern_valid(const char *pattern);
bool sb_auth_pattern_match(const char *pattern, sb_str_t channel);

/* Subscribe: allowed when the token has no "channels" claim (it only names the
 * user) or one of its patterns matches. Publish: allowed only when a "publish"
 * pattern matches (a token without the claim may not publish). */
bool sb_auth_can_subscribe(const sb_token_t *t, sb_str_t channel);
bool sb_auth_can_publish(const sb_token_t *t, sb_str_t channel);

/* Compares a[0..alen) with b[0..blen) in time that depends only on the lengths. */
bool sb_auth_ct_equal(const void *a, size_t alen, const void *b, size_t blen);

/* Signs claims_json (a JSON object text) with HS256 and returns a malloc'd
 * token string (for tests, examples and the console's dev tokens). */
char *sb_auth_jwt_sign(const char *claims_json, const uint8_t *secret, size_t secret_len);

#endif
