#!/usr/bin/env bash
# nchan (Debian's nginx + libnginx-mod-nchan) as a pub/sub server on loopback, with its
# own prefix directory and a generated config: never the system service.
#   POST /v1/channels/{ch}/messages   publish (the raw body is the message)
#   GET  /v1/sse?channel=ch           EventSource subscriber
#   GET  /v1/ws?channel=ch            WebSocket subscriber
# One worker process, like the other peers and the one-core budget of issue 9.
# usage: bench/peers/nchan.sh PORT [PREFIX_DIR]    (runs in the foreground; exec's nginx)
# NCHAN_REDIS=HOST:PORT keeps the channels in that Redis instead (nchan's own
# clustering: every nginx pointed at one Redis serves the same channels).
set -euo pipefail
port=${1:?usage: nchan.sh PORT [PREFIX_DIR]}
dir=${2:-/tmp/sb-bench-nchan-$port}
module=/usr/lib/nginx/modules/ngx_nchan_module.so
if ! command -v nginx >/dev/null || [ ! -f "$module" ]; then
  echo "nchan.sh: needs the Debian packages nginx and libnginx-mod-nchan" >&2
  exit 1
fi
mkdir -p "$dir/logs" "$dir/tmp"
cat > "$dir/nginx.conf" <<CONF
load_module $module;
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;

events {
    # nchan spends connection slots beyond its sockets (nginx warned "worker_connections
    # are not enough" at ~18,650 of 19,900 subscribers), so this is set above the file
    # limit, which is the real cap.
    worker_connections 32768;
    use epoll;
    multi_accept on;
}

http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    # A publisher keeps one connection for the whole run (the default ends it after
    # 1,000 requests, which would measure reconnects instead of publishing).
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    nchan_max_reserved_memory 512M;
${NCHAN_REDIS:+    nchan_redis_url "redis://$NCHAN_REDIS";
    nchan_use_redis on;}

    server {
        listen 127.0.0.1:$port;
        location = /v1/sse {
            nchan_subscriber eventsource;
            nchan_channel_id \$arg_channel;
            nchan_subscriber_first_message newest;
        }
        location = /v1/ws {
            nchan_subscriber websocket;
            nchan_channel_id \$arg_channel;
            nchan_subscriber_first_message newest;
        }
        location ~ ^/v1/channels/([^/]+)/messages\$ {
            nchan_publisher http;
            nchan_channel_id \$1;
        }
    }
}
CONF
exec nginx -p "$dir" -c "$dir/nginx.conf"
