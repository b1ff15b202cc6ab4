// Node client step of the clavis end-to-end test.
//
// Usage: node node_client.mjs URL EXPECTED_SUBSTRING [Header: value ...]
//
// Node 20 has no NODE_USE_ENV_PROXY, so this uses undici's EnvHttpProxyAgent,
// which reads HTTPS_PROXY / HTTP_PROXY / NO_PROXY like Node 22+ does. undici
// tunnels even http:// URLs with `CONNECT host:80`. Trust comes from
// NODE_EXTRA_CA_CERTS (clavis's CA certificate, appended to Node's roots).
import { EnvHttpProxyAgent, fetch } from 'undici';

const [url, expected, ...headerArgs] = process.argv.slice(2);
if (!url || expected === undefined) {
  console.error('usage: node node_client.mjs URL EXPECTED_SUBSTRING [Header: value ...]');
  process.exit(2);
}
const headers = {};
for (const h of headerArgs) {
  const i = h.indexOf(':');
  headers[h.slice(0, i).trim()] = h.slice(i + 1).trim();
}

const dispatcher = new EnvHttpProxyAgent();
try {
  const res = await fetch(url, { dispatcher, headers, signal: AbortSignal.timeout(30000) });
  const body = await res.text();
  if (res.status !== 200) {
    console.log(`FAIL: ${url}: status ${res.status}: ${body.slice(0, 300)}`);
    process.exit(1);
  }
  if (!body.includes(expected)) {
    console.log(`FAIL: ${url}: body lacks ${JSON.stringify(expected)}: ${body.slice(0, 300)}`);
    process.exit(1);
  }
  console.log(`${url}: ${res.status} ${body.slice(0, 120)}`);
} catch (e) {
  console.log(`FAIL: ${url}: ${e}${e.cause ? ` (cause: ${e.cause})` : ''}`);
  process.exit(1);
} finally {
  await dispatcher.close().catch(() => {});
}
