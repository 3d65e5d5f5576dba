# Makes sure Debian's nginx is installed, for tests/multi_host.rs (two gateway hosts behind
# examples/nginx-lb.conf). Source, then call ensure_nginx. The tests start and stop their own
# nginx on free loopback ports; nothing here starts one.

ensure_nginx() {
  if command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]]; then return 0; fi
  echo "nginx not found: installing Debian's nginx" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx) >&2
}
