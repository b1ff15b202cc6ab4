"""mitmproxy peer for the clavis benchmark: the same work clavis does.

- pins the test host's upstream address (like curl --resolve) while keeping
  SNI and certificate verification for the real name;
- replaces the Authorization header with the real credential for that host;
- streams every response (so SSE arrives event by event and /large is not
  buffered).

Options (mitmdump --set): bench_host, bench_resolve ("ip:port"), bench_auth.
Upstream verification uses mitmproxy's ssl_verify_upstream_trusted_ca.
"""

from mitmproxy import ctx, http
from mitmproxy.proxy.server_hooks import ServerConnectionHookData


class BenchInject:
    def load(self, loader):
        loader.add_option("bench_host", str, "api.openai.com", "host to inject for")
        loader.add_option("bench_resolve", str, "", "ip:port the host is pinned to")
        loader.add_option("bench_auth", str, "", "Authorization value to set")

    def server_connect(self, data: ServerConnectionHookData) -> None:
        addr = data.server.address
        if addr and addr[0].lower() == ctx.options.bench_host and addr[1] == 443:
            ip, port = ctx.options.bench_resolve.rsplit(":", 1)
            data.server.address = (ip, int(port))
            data.server.sni = ctx.options.bench_host

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.request.pretty_host.lower() == ctx.options.bench_host:
            flow.request.headers["Authorization"] = ctx.options.bench_auth

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        flow.response.stream = True


addons = [BenchInject()]
