/* Configuration parsing: durations, sizes, slow-reader rules, flags vs env. */
#include <stdlib.h>

#include "config/config.h"
#include "testlib.h"

int main(void)
{
    int64_t v;
    CHECK(!sb_config_parse_duration("15s", 1000, &v) && v == 15000);
    CHECK(!sb_config_parse_duration("500ms", 1000, &v) && v == 500);
    CHECK(!sb_config_parse_duration("2m", 1000, &v) && v == 120000);
    CHECK(!sb_config_parse_duration("1h", 1000, &v) && v == 3600000);
    CHECK(!sb_config_parse_duration("3", 1000, &v) && v == 3000);
    CHECK(sb_config_parse_duration("3x", 1000, &v) < 0);
    CHECK(sb_config_parse_duration("-1s", 1000, &v) < 0);
    CHECK(sb_config_parse_duration("", 1000, &v) < 0);
    CHECK(!sb_config_parse_size("1MiB", &v) && v == 1048576);
    CHECK(!sb_config_parse_size("64k", &v) && v == 65536);
    CHECK(!sb_config_parse_size("100", &v) && v == 100);
    CHECK(sb_config_parse_size("10q", &v) < 0);

    sb_config_t c;
    CHECK_EQ_INT(sb_config_parse_slow_policy(&c, "cursor:*=conflate,feed=drop-oldest,*=disconnect"), 0);
    CHECK_EQ_INT(c.nslow_rules, 3);
    CHECK(sb_config_parse_slow_policy(&c, "a=explode") < 0);
    CHECK(sb_config_parse_slow_policy(&c, "=conflate") < 0);
    CHECK(sb_config_pattern_match("cursor:*", SB_STR("cursor:doc")));
    CHECK(sb_config_pattern_match("cursor:*", SB_STR("cursor:")));
    CHECK(!sb_config_pattern_match("cursor:*", SB_STR("cursor")));
    CHECK(sb_config_pattern_match("*", SB_STR("anything")));
    CHECK(sb_config_pattern_match("exact", SB_STR("exact")));
    CHECK(!sb_config_pattern_match("exact", SB_STR("exactly")));

    setenv("SWITCHBOARD_HISTORY_SIZE", "77", 1);
    setenv("SWITCHBOARD_HEARTBEAT", "3s", 1);
    char *argv[] = {"switchboard", "serve", "--listen", "127.0.0.2:9999", "--heartbeat=5s",
                    "--slow-policy", "cursor:*=conflate", NULL};
    CHECK_EQ_INT(sb_config_parse(7, argv), 0);
    CHECK_EQ_INT(sb_cfg.history_size, 77);     /* from the environment */
    CHECK_EQ_INT(sb_cfg.heartbeat_ms, 5000);   /* the flag wins over the environment */
    CHECK_EQ_INT(sb_cfg.listen_port, 9999);
    CHECK(!strcmp(sb_cfg.listen_host, "127.0.0.2"));
    CHECK_EQ_INT(sb_config_slow_policy(SB_STR("cursor:x")), SB_SLOW_CONFLATE);
    CHECK_EQ_INT(sb_config_slow_policy(SB_STR("other")), SB_SLOW_DISCONNECT);
    char *bad[] = {"switchboard", "--nope", NULL};
    CHECK_EQ_INT(sb_config_parse(2, bad), -1);
    char *bad2[] = {"switchboard", "--workers", "0", NULL};
    CHECK_EQ_INT(sb_config_parse(3, bad2), -1);
    char *ipv6[] = {"switchboard", "--listen", "[::1]:8081", NULL};
    CHECK_EQ_INT(sb_config_parse(3, ipv6), 0);
    CHECK(!strcmp(sb_cfg.listen_host, "::1"));
    return tl_done("config");
}
