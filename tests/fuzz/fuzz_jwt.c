/* Fuzzes token verification and pattern matching with hostile bytes.
 * The input is used three ways: as a whole token against a fixed secret (splitting,
 * base64url, MAC), as the claims of a token this module signs (so the strict JSON and
 * claim checks behind the MAC are reached too), and cut in two as pattern + channel. */
#include <cjson/cJSON.h>
#include <stdlib.h>

#include "auth/auth.h"

static const uint8_t SECRET[] = "fuzz";

static void check_token(const sb_token_t *t)
{
    /* Whatever verifies must hold only valid patterns and compact, parseable info. */
    for (int i = 0; i < t->nchannels; i++)
        if (!sb_auth_pattern_valid(t->channels[i])) abort();
    for (int i = 0; i < t->npublish; i++)
        if (!sb_auth_pattern_valid(t->publish[i])) abort();
    if (t->info_json) {
        cJSON *j = cJSON_Parse(t->info_json);
        if (!j) abort();
        cJSON_Delete(j);
    }
    sb_auth_can_subscribe(t, SB_STR("chat:x"));
    sb_auth_can_publish(t, SB_STR("chat:x"));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sb_token_t t;
    sb_err_t why;
    if (sb_auth_jwt_verify(sb_str((const char *)data, size), SECRET, 4, 1000, &t, &why) == 0) {
        check_token(&t);
        sb_token_free(&t);
    } else if (t.sub || t.channels || t.publish || t.info_json) {
        abort(); /* a refusal leaves nothing to free */
    }

    /* The input as claims: the signature is right, so only the JSON checks decide. */
    if (size <= 7000) {
        char *claims = malloc(size + 1);
        memcpy(claims, data, size);
        claims[size] = 0;
        char *tok = sb_auth_jwt_sign(claims, SECRET, 4);
        if (!tok) abort();
        if (sb_auth_jwt_verify(sb_str(tok, strlen(tok)), SECRET, 4, 1000, &t, &why) == 0) {
            check_token(&t);
            sb_token_free(&t);
        }
        free(tok);
        free(claims);
    }

    /* Pattern + channel; the channel stays a slice of the input with no terminator. */
    size_t cut = size ? data[0] % (size < 160 ? size : 160) : 0;
    char pat[161];
    memcpy(pat, data, cut);
    pat[cut] = 0;
    bool valid = sb_auth_pattern_valid(pat);
    bool m = sb_auth_pattern_match(pat, sb_str((const char *)data + cut, size - cut));
    if (valid && !strcmp(pat, "*") && !m) abort();
    return 0;
}
