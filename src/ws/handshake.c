/* The opening-handshake pieces of RFC 6455 4.2: Sec-WebSocket-Key validation and
 * the Sec-WebSocket-Accept value. Pure functions; any thread. */
#include "ws/frame.h"

#include <openssl/evp.h>

static const char ws_guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/* The key is hashed together with the GUID in one EVP context rather than a
 * concatenation buffer, so a key of any length needs no allocation of ours. On
 * the (allocation-only) failure of OpenSSL the output is the empty string, which
 * no client accepts: the handshake fails closed. */
void sb_ws_accept_key(sb_str_t client_key, char out[29])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    out[0] = '\0';
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx) return;
    bool ok = EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) == 1 &&
              EVP_DigestUpdate(ctx, client_key.p, client_key.len) == 1 &&
              EVP_DigestUpdate(ctx, ws_guid, sizeof(ws_guid) - 1) == 1 &&
              EVP_DigestFinal_ex(ctx, md, &mdlen) == 1 && mdlen == 20;
    EVP_MD_CTX_free(ctx);
    if (!ok) return;
    /* 20 bytes encode to 28 characters plus the NUL that EVP_EncodeBlock writes. */
    EVP_EncodeBlock((unsigned char *)out, md, 20);
}

static bool b64_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '+' || c == '/';
}

/* 16 bytes are 22 base64 characters and "==". The four bits that the 22nd
 * character carries beyond the 128 are not required to be zero: decoders ignore
 * them, and a client that sets them still sent 16 bytes. */
bool sb_ws_key_valid(sb_str_t key)
{
    if (key.len != 24 || key.p[22] != '=' || key.p[23] != '=') return false;
    for (size_t i = 0; i < 22; i++)
        if (!b64_char(key.p[i])) return false;
    return true;
}
